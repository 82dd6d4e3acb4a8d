"""Installs tfvamp: VAEs with a VampPrior (Tomczak & Welling, AISTATS 2018) on TensorFlow 2."""
from setuptools import find_packages, setup

setup(
    name="tfvamp",
    version="0.1.0",
    description="VAEs with a VampPrior on TensorFlow 2 / TFP / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfvamp", "tfvamp.*"]),
    python_requires=">=3.10",
    # Ranges seen working together on CPython 3.11 (CPU build); TFP imports
    # tf_keras at load time, so it is a real dependency even with Keras 3.
    install_requires=[
        "tensorflow>=2.20,<2.21",
        "tf-keras>=2.20,<2.21",
        "tensorflow-probability>=0.25,<0.26",
        "keras>=3.10,<3.13",
        "tensorflow-datasets>=4.9.9,<4.10",
        # TFDS 4.9.x imports it when building datasets defined outside its package
        # (tensorflow/datasets#11212).
        "importlib_resources>=6",
        "numpy>=1.26,<3",
        "absl-py>=2.1",
        "scipy>=1.11",
        "pillow>=10",
        "tqdm>=4.66",
    ],
    extras_require={"test": ["pytest>=8"]},
    # The command-line programs (tfvamp/cli/); scripts/*.py run the same main()s from a checkout.
    entry_points={"console_scripts": [
        "tfvamp-train = tfvamp.cli.train:main",
        "tfvamp-evaluate = tfvamp.cli.evaluate:main",
        "tfvamp-export = tfvamp.cli.export:main",
        "tfvamp-sample = tfvamp.cli.sample:main",
        "tfvamp-benchmark = tfvamp.cli.benchmark:main",
        "tfvamp-prepare-data = tfvamp.cli.prepare_data:main",
        "tfvamp-compare-runs = tfvamp.cli.compare_runs:main",
        "tfvamp-report = tfvamp.cli.report:main",
    ]},
)
