"""Build hook for the optional native extensions (metadata lives in pyproject.toml).

``quicflow.crypto._native`` (C on OpenSSL's libcrypto) speeds up the crypto offload engine;
``quicflow.datapath._udp`` (plain C) reads a receive batch with one ``recvmmsg`` and splits
and sends a build's GSO runs in one call.
Both are optional: without a C compiler, Python headers or the libssl headers the build
prints a warning and quicflow installs without them (the pure-Python code is used). Set
``QUICFLOW_NO_NATIVE=1`` to skip them deliberately.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_NATIVE_ENV = "QUICFLOW_NO_NATIVE"
# C sources of quicflow.crypto._native: a plain folder, deliberately not named "_native" so
# that it can never be imported as a namespace package in place of the extension module.
NATIVE_SRC = "src/quicflow/crypto/_native_src"
UDP_SRC = "src/quicflow/datapath/_udp_src"  # quicflow.datapath._udp, same reason


def _skip_native() -> bool:
    return os.environ.get(NO_NATIVE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class OptionalBuildExt(build_ext):
    """``build_ext`` that turns a failed extension build into a warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler/linker/setup failure
            self._warn(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - CompileError, LinkError, missing headers
            self._warn(exc, ext.name)

    @staticmethod
    def _warn(exc: BaseException, name: str = "native extensions") -> None:
        print(
            f"WARNING: could not build {name} ({type(exc).__name__}: {exc}); "
            "quicflow falls back to its pure-Python code. "
            "Install gcc, python3-dev and libssl-dev to get it.",
            file=sys.stderr,
        )


ext_modules = []
if _skip_native():
    print(f"{NO_NATIVE_ENV} is set: not building the native extensions", file=sys.stderr)
else:
    ext_modules.append(
        Extension(
            "quicflow.crypto._native",
            sources=[
                f"{NATIVE_SRC}/{name}.c"
                for name in ("module", "keys", "hmac", "hkdf", "table", "batch", "coalesce",
                             "stream_run", "fields", "pacer", "bulk", "ack", "tparams",
                             "header", "frames", "objects", "hello", "ticket", "plan",
                             "segments", "idle", "sent")
            ],
            depends=[f"{NATIVE_SRC}/native.h"],
            libraries=["crypto"],
            extra_compile_args=[
                "-O2",
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Wno-missing-field-initializers",
                "-fvisibility=hidden",  # export only PyInit__native, as with one static file
            ],
            optional=True,
        )
    )
    # quicflow.datapath._udp: one recvmmsg per receive batch, a build's GSO sends in one
    # call (datapath/backends.py and aio/gso.py fall back to one recvmsg per buffer and
    # the Python split and sendmsg loop without it)
    ext_modules.append(
        Extension(
            "quicflow.datapath._udp",
            sources=[f"{UDP_SRC}/udp.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra",
                                "-Wno-missing-field-initializers", "-fvisibility=hidden"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
