"""configs/scifact.py with Matryoshka (configs/matryoshka.py): the table in docs/matryoshka.md.

    python main.py --config=configs/scifact_matryoshka.py --workdir=runs/scifact_matryoshka
    python evaluate.py --model=runs/scifact_matryoshka --retrieval=sample_data/retrieval/scifact \
        --truncate_dim=384,192,96,48
"""

from configs import matryoshka, scifact


def get_config(arg=None):
    c = matryoshka.apply(scifact.get_config())
    return scifact.base.apply_arg(c, arg)
