"""The mailstore address the production manifests give the frontends (k8s/overlays/production, the Helm
chart): `dns:///NAME.NAMESPACE.svc:50051`, gRPC's DNS resolver over the headless Service (ADR 0032).
Here a real mailstore answers a frontend's channel opened with that form of address, over mTLS, although
the name dialled is not the certificate's ("mailstore"): the client checks the server's identity, not
the address, so every replica's address in the DNS answer is accepted."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from mailstack.services.common.grpc_client import identity_for, open_channel
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from tests.deploy_render import container_env, containers, find, render
from tests.fixtures.mailstore import running_mailstore, settings_for


def production_address_form() -> str:
    manifests = render("overlays/production")
    (smtp,) = find(manifests, "Deployment", "smtp")
    (container,) = containers(smtp)
    address = container_env(container, manifests)["MAILSTACK_MAILSTORE_ADDR"]
    assert isinstance(address, str) and address.startswith("dns:///")
    return address


async def test_a_frontend_reaches_the_mailstore_through_a_dns_target(tmp_path: Path) -> None:
    form = production_address_form()
    host_and_port = form.removeprefix("dns:///")
    assert host_and_port.endswith(":50051") and host_and_port.split(".")[0] == "mailstore-headless"
    settings = settings_for(tmp_path)
    async with running_mailstore(settings) as (server, _client):
        port = server.address.rpartition(":")[2]
        # The same form, with a name this machine resolves (the resolver reads /etc/hosts too).
        channel = open_channel(f"dns:///localhost:{port}", identity_for(settings, "smtp"))
        try:
            stub = pbg.MailstoreStub(channel)
            reply = await stub.ResolveRecipient(pb.ResolveRecipientRequest(address="nobody@example.test"), timeout=10)
            assert reply.account == ""  # answered: no such account
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # the identity still counts, not the address
                await stub.ListMailboxes(pb.ListMailboxesRequest(account="nobody@example.test"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await channel.close(None)
