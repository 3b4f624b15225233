"""Build the C extensions; everything else is declared in pyproject.toml.

mux._fast is the product's core (mux/fastcore/ holds its concern files and C headers);
mux.sim._simfast and mux.bench._floor are support code reading the same records. C headers
are found from the mux/ directory ("fastcore/xm_helpers.h", "sim/shm_layout.h"), and so are
the Cython include files.
"""

from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

COMMON = ["mux/fastcore/xm_record.h", "mux/fastcore/xm_helpers.h", *glob("mux/fastcore/*.pxi")]


def extension(name: str, source: str, depends: list[str], **kw) -> Extension:
    return Extension(
        name,
        [source],
        include_dirs=["mux"],
        depends=COMMON + depends,
        extra_compile_args=["-O2"],
        **kw,
    )


extensions = [
    extension("mux._fast", "mux/_fast.pyx", ["mux/_fast.pxd"], libraries=["dl"]),
    extension(
        "mux.sim._simfast", "mux/sim/_simfast.pyx", ["mux/sim/shm_layout.h", "mux/sim/hostpath.h"]
    ),
    extension("mux.bench._floor", "mux/bench/_floor.pyx", ["mux/bench/floor.h"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["mux"],
        # The generated C stays out of the source tree.
        build_dir="build/cython",
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
