"""Writes the C source of the cffi extension module ``fusedce._cffi`` (API, out-of-line mode).

CMake runs this at build time (``python _ffi_build.py OUT.c HEADER [HEADER ...]``) and compiles
the result together with csrc/. The declarations are the headers' (fusedce.h, and fusedce_xla.h
for the JAX adapter's XLA handlers), read from the headers themselves so the two cannot drift; the preprocessor lines are dropped because cffi's cdef parser does not take them.
"""

import os
import re
import sys

import cffi


def cdef_from_header(path):
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    body = "\n".join(lines)
    body = body.replace('extern "C" {', "")
    # Drop the C++ guard's lone closing brace (the only '}' not ending a struct or enum).
    body = re.sub(r"^\s*}\s*$", "", body, flags=re.M)
    return body


def main(out_c, *headers):
    ffi = cffi.FFI()
    for header in headers:
        ffi.cdef(cdef_from_header(header))
    includes = "".join(f'#include "{os.path.basename(h)}"\n' for h in headers)
    ffi.set_source("fusedce._cffi", includes)
    ffi.emit_c_code(out_c)


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:])
