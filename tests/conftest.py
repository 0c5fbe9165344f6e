"""Session-wide test settings: the suite never touches the network, so the Hugging Face libraries run
offline for every test (set before any of them is imported; they read these at import)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
