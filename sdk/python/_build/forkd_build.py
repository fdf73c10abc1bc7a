"""A PEP 517 build backend in the standard library alone, so `pip install ./sdk/python` needs nothing
from PyPI (setuptools and wheel may be absent, and PyPI unreachable, where forkd runs)."""
import base64
import hashlib
import io
import os
import tarfile
import zipfile

NAME = "forkd"
VERSION = "0.1.0"
DIST = f"{NAME}-{VERSION}"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METADATA = f"""Metadata-Version: 2.1
Name: {NAME}
Version: {VERSION}
Summary: Python SDK for forkd: fork warm microVM sandboxes (standard library only)
Requires-Python: >=3.9
"""
WHEEL = "Wheel-Version: 1.0\nGenerator: forkd_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def _package_files():
    pkg = os.path.join(ROOT, NAME)
    for f in sorted(os.listdir(pkg)):
        if f.endswith(".py") or f == "py.typed":
            yield f"{NAME}/{f}", os.path.join(pkg, f)


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    d = os.path.join(metadata_directory, f"{DIST}.dist-info")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "METADATA"), "w") as f:
        f.write(METADATA)
    with open(os.path.join(d, "WHEEL"), "w") as f:
        f.write(WHEEL)
    return f"{DIST}.dist-info"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = f"{DIST}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        def add(arc, data):
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")

        for arc, path in _package_files():
            with open(path, "rb") as f:
                add(arc, f.read())
        add(f"{DIST}.dist-info/METADATA", METADATA.encode())
        add(f"{DIST}.dist-info/WHEEL", WHEEL.encode())
        record.append(f"{DIST}.dist-info/RECORD,,")
        z.writestr(f"{DIST}.dist-info/RECORD", "\n".join(record) + "\n")
    return name


def build_sdist(sdist_directory, config_settings=None):
    name = f"{DIST}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as t:
        for rel in ["pyproject.toml", "README.md", "_build/forkd_build.py"] + [a for a, _ in _package_files()]:
            t.add(os.path.join(ROOT, rel), arcname=f"{DIST}/{rel}")
        info = tarfile.TarInfo(f"{DIST}/PKG-INFO")
        data = METADATA.encode()
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return name
