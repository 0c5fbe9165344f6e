"""Offline int4 quantization (RTN, GPTQ, FAIR-Calib), calibration data and fidelity evaluation."""
