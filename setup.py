"""The wheel's packages, found rather than listed: every package under the three parts'
folders, installed under `rlme.` (pyproject.toml maps service/ to rlme.service, client/ to
rlme.client, trainer/ to rlme.trainer; everything else about the build lives there).
`make check-wheel` checks that every module of the checkout is in the wheel."""

from setuptools import find_packages, setup

PARTS = ("service", "client", "trainer")

setup(packages=[f"rlme.{name}" for name in find_packages(include=[*PARTS, *(f"{p}.*" for p in PARTS)])])
