"""amodal: occlusion-aware streaming video analytics.

The top-level folders install as sub-packages of ``amodal`` (``engine/`` → ``amodal.engine`` …);
no bare top-level ``engine``/``models`` package is ever installed.
"""
from setuptools import find_packages, setup

SUBPACKAGES = ("engine", "kernels", "models", "streams", "training", "bench")


def _packages() -> tuple[list[str], dict[str, str]]:
    packages = ["amodal"] + [f"amodal.{sub}" for sub in find_packages(where="amodal")]
    package_dir = {"amodal": "amodal"}
    for name in SUBPACKAGES:
        packages.append(f"amodal.{name}")
        package_dir[f"amodal.{name}"] = name
        for sub in find_packages(where=name):
            packages.append(f"amodal.{name}.{sub}")
            package_dir[f"amodal.{name}.{sub}"] = f"{name}/{sub.replace('.', '/')}"
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

setup(
    name="amodal",
    version="0.1.0",
    description="Occlusion-aware streaming video analytics engine",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"amodal": ["_weights/*.safetensors", "_weights/*.yaml", "_weights/*.json"]},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "av>=14",
        "pyzmq>=26",
        "msgpack>=1.0",
        "pycocotools>=2.0.8",
        "numpy>=1.26",
        "scipy>=1.11",
        "pyyaml>=6",
        "safetensors>=0.4",
        "pillow>=10",
        "tifffile>=2024.1",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "faiss-cpu>=1.8",
        "prometheus-client>=0.20",
        "transformers>=5.23",
        "peft>=0.21",
        "pydicom>=3.0.2",
        "diffusers==0.42.1",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "selenium>=4.51"],
        "web": ["fastapi>=0.163", "uvicorn>=0.54"],  # amodal run --http, amodal view
        "cluster": ["ray>=2.60", "nats-py>=2.16"],  # amodal cluster, nats:// subscribers
        "world": ["scikit-image>=0.26"],  # the camera-style synthetic street (amodal data synth video --style camera)
    },
    entry_points={"console_scripts": ["amodal=amodal.cli:main"]},
)
