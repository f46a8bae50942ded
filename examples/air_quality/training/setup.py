"""The air-quality trainer as an sdist, for CustomPythonPackageTrainingJob (`python -m trainer.task`)."""

from setuptools import find_packages, setup

setup(
    name="air-quality-trainer",
    version="0.1.0",
    packages=find_packages(),
    install_requires=["scikit-learn", "pandas", "numpy", "google-cloud-storage"],
)
