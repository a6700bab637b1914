"""Speed: one module per measured speed-up over the libraries' own code paths (bench/ measures each side by side)."""
