"""Side-by-side benchmarks against peer libraries (optional: `pip install -e '.[bench]'`)."""
