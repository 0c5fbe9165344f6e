"""OpenAI-compatible HTTP server streaming the commit events of every denoising step."""
