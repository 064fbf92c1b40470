#!/usr/bin/env python3
"""Download, for the GPU machine (python 3.12, manylinux x86_64, no network there), the wheels
of this project's runtime dependencies that its image lacks, and of their dependencies.

Resolution: start from PINS (exact versions), read every downloaded wheel's Requires-Dist
(extras and markers that are false for python 3.12 on linux are skipped), and fetch each
requirement not provided by the image (IMAGE) with pip's own resolver for that one name
(``--no-deps``), preferring a pin. Packages shipped only as pure-python sdists are built into
wheels here with ``pip wheel``. Writes ``.whl/*.whl`` and ``.whl/LOCK.txt`` (name==version).
Run by tools/gpu/prepare.sh; see benchmarks/smollm2_gpu/README.md.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from pip._vendor.packaging.markers import default_environment
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name

#: What the run needs beyond the image, at the versions the CPU venv is built and tested with.
PINS = {
    "trl": "1.16.0", "datasets": "5.2.0", "snakemake": "9.27.0", "reasoning-gym": "0.1.25",
    "gguf": "0.19.0", "jsonschema": "4.26.0", "referencing": "0.37.0", "rpds-py": "2026.9.1",
    "jsonschema-specifications": "2025.9.1", "pytz": "2026.6", "dill": "0.4.1", "multiprocess": "0.70.19",
    "zss": "1.2.0", "pycosat": "0.6.6", "bfi": "1.0.4", "magiccube": "0.3.0", "pyfiglet": "1.0.2",
    "drawsvg": "2.4.2",
}
#: Not needed at import/run time by the pipeline (skipped on purpose):
#: pulp (Snakemake's ILP scheduler; remote.sh runs `--scheduler greedy`; its wheel carries
#: ~50 MB of solver binaries), pycosat (a C sdist: prepare.sh fetches the sdist, remote.sh
#: stage2 builds it on the GPU machine or installs a stub; reasoning_gym imports it at import
#: time, only its zebra puzzles call it).
SKIP = {"pulp", "pycosat", "torch", "nvidia-cudnn-cu12"}
#: Packages the GPU image already has (KINDS.md of the device tool, 2026-11-17).
IMAGE = set(canonicalize_name(n) for n in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}


def _wheel_name(f: Path) -> str:
    return canonicalize_name(f.name.split("-")[0])


def _requires(whl: Path) -> list[Requirement]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    out = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            r = Requirement(line.split(":", 1)[1].strip())
            if r.marker is None or r.marker.evaluate({**ENV, "extra": ""}):
                out.append(r)
    return out


def _fetch(spec: str, dest: Path) -> None:
    base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest)]
    cmd = base + ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    if subprocess.run(cmd + [spec]).returncode == 0:
        return
    # sdist only (zss, cellpylib ...): build a wheel here (pure python, so it installs anywhere)
    print(f"[fetch_wheels] no wheel for {spec}: building one with pip wheel", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), spec], check=True)


def main(dest: str = ".whl") -> int:
    d = Path(dest)
    d.mkdir(exist_ok=True)
    queue = [Requirement(f"{n}=={v}") for n, v in PINS.items() if canonicalize_name(n) not in SKIP]
    done: set[str] = set()
    while queue:
        r = queue.pop(0)
        name = canonicalize_name(r.name)
        if name in done or name in IMAGE or name in SKIP:
            continue
        done.add(name)
        have = [f for f in d.glob("*.whl") if _wheel_name(f) == name]
        if not have:
            pin = next((v for n, v in PINS.items() if canonicalize_name(n) == name), None)
            spec = f"{r.name}=={pin}" if pin and (not r.specifier or r.specifier.contains(pin)) \
                else f"{r.name}{r.specifier}"
            _fetch(spec, d)
            have = [f for f in d.glob("*.whl") if _wheel_name(f) == name]
        if len(have) != 1:
            print(f"[fetch_wheels] expected one wheel for {name}, found {[f.name for f in have]}", file=sys.stderr)
            return 1
        queue += _requires(have[0])
    wheels = sorted(d.glob("*.whl"))
    stale = [f for f in wheels if _wheel_name(f) not in done]
    for f in stale:  # left over from an earlier run with other pins
        f.unlink()
    lock = sorted(f"{_wheel_name(f)}=={f.name.split('-')[1]}" for f in d.glob("*.whl"))
    (d / "LOCK.txt").write_text("\n".join(lock) + "\n")
    print(f"[fetch_wheels] {len(lock)} wheels in {d}: " + " ".join(lock))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
