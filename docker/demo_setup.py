"""Write the demo inputs for docker-compose: the features table (Parquet) and the ONNX model.

    python docker/demo_setup.py /data/demo [ENTITIES]
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq

from jobs import demo_data


def main(out: str, entities: int = 100_000) -> None:
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    pq.write_table(demo_data.features_table(entities), target / "features.parquet")
    shutil.copy(demo_data.demo_model(entities), target / "demo.onnx")
    print(f"demo features ({entities:,} entities) and model in {target}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
