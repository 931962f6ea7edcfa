"""Packages live in the design card's folders but install under one namespace:
mailstack.services <- services/, mailstack.storage <- storage/,
mailstack.message <- message/, mailstack.v1 <- proto/mailstack/v1/."""

from setuptools import find_packages, setup

ROOTS = {
    "mailstack": "mailstack",
    "mailstack.services": "services",
    "mailstack.storage": "storage",
    "mailstack.message": "message",
}
packages = ["mailstack.v1"]
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages)
