"""Split a sentence-classification test file (``LABEL tokens...`` lines, as SST-2's) into the
sentences that have a word the training file never has, and the others, so that
``seqmodels-eval ... data.test_path=<part>`` reports accuracy on each (docs/results.md: what
pretrained vectors buy on unseen words).

    python scripts/split_by_unseen.py ../shared/data/sst2/stsa.binary.train \\
        ../shared/data/sst2/stsa.binary.test --out /tmp/sst2_parts
"""

import argparse
from pathlib import Path


def words(line: str) -> list[str]:
    return line.split()[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    seen = {w for line in args.train.read_text(encoding="utf-8").splitlines() for w in words(line)}
    parts: dict[str, list[str]] = {"with_unseen": [], "all_seen": []}
    for line in args.test.read_text(encoding="utf-8").splitlines():
        if line.strip():
            unseen = any(w not in seen for w in words(line))
            parts["with_unseen" if unseen else "all_seen"].append(line)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, lines in parts.items():
        (args.out / f"{args.test.name}.{name}").write_text("\n".join(lines) + "\n",
                                                          encoding="utf-8")
        print(f"{args.out / f'{args.test.name}.{name}'}: {len(lines)} sentences")


if __name__ == "__main__":
    main()
