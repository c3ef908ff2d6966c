"""``python -m model_server.predict``: predict a batch of rows in a process of its own.

Model files are untrusted code (a joblib file is a pickle, and loading it runs whatever it
holds), so the release process never loads them itself. Evaluation writes the rows to an
``.npy`` file and runs this module in a fresh process with the build's minimal environment
(no Airflow variables, connections or secrets); the outputs come back as an ``.npz`` file,
read without pickle::

    python -m model_server.predict --artifact DIR --features rows.npy --output outputs.npz

The model is loaded through the same loader as the server (``model_server.flavors``), so what
is measured is what will be served. Exit codes: 0 done; 2 bad arguments; 4 the artifact or the
rows are unusable (the reason is the last line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_UNUSABLE = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_server.predict")
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--features", required=True, type=Path, help="a 2-D .npy array of rows")
    parser.add_argument("--output", required=True, type=Path, help="where the .npz of outputs is written")
    args = parser.parse_args(argv)

    import numpy as np

    from model_server.flavors import InvalidInput, ServingConfigError, load_model

    try:
        model = load_model(args.artifact)
        outputs = model.predict(np.load(args.features, allow_pickle=False))
    except (ServingConfigError, InvalidInput) as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_UNUSABLE
    except Exception as exc:  # noqa: BLE001 - whatever the model's own code raises is reported, not trusted
        print(f"the model could not be loaded or run: {type(exc).__name__}: {str(exc)[:500]}", file=sys.stderr)
        return EXIT_UNUSABLE
    np.savez(args.output, **outputs)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
