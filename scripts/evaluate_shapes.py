#!/usr/bin/env python
"""Edit-quality benchmark on the shapes world, judged analytically: imagic_lora.shapes_benchmark.

    python scripts/evaluate_shapes.py --num_cases 75 --output_dir docs
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from imagic_lora.shapes_benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
