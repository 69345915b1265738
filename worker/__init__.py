"""xray-screen worker: decode chest X-rays, screen them with an exported fastai learner."""

__version__ = "0.1.0"
