#!/usr/bin/env bash
# Installs the Debian packages the end-to-end tests drive as real clients and MTAs, and the
# PostgreSQL server the metadata contract tests start (tests/fixtures/postgres_server.py),
# only those missing. Needs root (apt-get) when something is missing.
set -euo pipefail

# npm: scripts/install_buf.sh installs buf (the proto linter) with it.
# swaks only Recommends its TLS modules (Net::SSLeay, IO::Socket::SSL), which --no-install-recommends leaves out.
PACKAGES=(  # one per line, so that additions merge
    swaks
    libnet-ssleay-perl
    libio-socket-ssl-perl
    curl
    fetchmail
    isync
    mutt
    getmail6
    postfix
    bsdutils
    libsasl2-modules
    ca-certificates
    fail2ban
    postgresql
    dovecot-core
    npm
    rspamd  # the spam filter tests start a private one (tests/fixtures/rspamd_server.py)
    dovecot-imapd  # the private Dovecot of the migration tests (tests/fixtures/dovecot_server.py)
    dovecot-pop3d
    dovecot-lmtpd
)

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install_clients: not a Debian-like system (no dpkg-query); install these yourself: ${PACKAGES[*]}" >&2
    exit 1
fi

# A package whose command is already there from elsewhere counts as present: NodeSource's nodejs
# ships npm and conflicts with Debian's npm package, so asking apt for npm would break the install.
declare -A COMMAND_OF=([npm]=npm)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if [ -n "${COMMAND_OF[$pkg]:-}" ] && command -v "${COMMAND_OF[$pkg]}" >/dev/null 2>&1; then
        continue
    fi
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install_clients: all client packages present"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_clients: missing Debian packages: ${missing[*]}" >&2
    echo "install_clients: run as root: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "install_clients: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# postfix is only a client-side tool here (sendmail, postqueue); "No configuration" keeps it from starting a daemon.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# A freshly booted machine runs its own apt (unattended-upgrades): wait up to 10 minutes for its lock.
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_clients: installed ${missing[*]}"
