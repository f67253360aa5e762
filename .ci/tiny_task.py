"""Write a tiny BERT and a small CSV task (the tests' own builders) into a folder, for CI's check
that the installed wheel runs a real search from another directory."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import save_tiny_bert, sentiment_rows, write_csv  # noqa: E402

folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
save_tiny_bert(folder / "model")
write_csv(folder / "train.csv", sentiment_rows(400))
