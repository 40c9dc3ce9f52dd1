"""Domain fine-tuning example: all-MiniLM-L6-v2 on SciFact's *train* claims -> cited abstracts.

    python tools/write_scifact_pairs.py  # (re)writes the pairs file from qrels/train.tsv
    python main.py --config=configs/scifact.py --workdir=runs/scifact
    python evaluate.py --model=runs/scifact --retrieval=sample_data/retrieval/scifact

The pairs are `[claim, title + " " + abstract]` for the lines of the bundled SciFact
qrels/train.tsv (807 claims, 917 pairs); no test claim is used: the splits share no query id
(tools/write_scifact_pairs.py checks) and the two train claims whose text repeats a test claim
are dropped.
The test split is evaluated afterwards with evaluate.py; the reference model scores 64.51
nDCG@10 there (MTEB), the figure to beat. Idea: in-domain fine-tuning of a general sentence
embedder with MultipleNegativesRankingLoss on (query, relevant passage) pairs, as in
sentence-transformers' domain-adaptation examples and the BEIR paper's in-domain baselines.
"""

import os

from configs import base

SCIFACT = os.path.join(base.SAMPLE, "retrieval", "scifact")
PAIRS_DIR = os.path.join(base.SAMPLE, "retrieval", "scifact_train")  # one dataset: the pairs
PAIRS = os.path.join(PAIRS_DIR, "scifact_train_pairs.jsonl.gz")


def get_config(arg=None):
    c = base.base()
    c.init_from = base._reference_model_dir()
    c.data.dir = PAIRS_DIR
    c.data.config_file = ""
    c.data.max_seq_len = 256  # the model's own limit: abstracts are long
    c.data.bucket_lengths = (64, 128, 256)
    c.data.datasets_per_batch = 1  # a single dataset
    c.data.max_negatives = 0  # pairs: in-batch negatives only
    c.data.shuffle_buffer = 1000  # the whole file
    c.batch_size = 32  # fits a 2-core CPU; 917 pairs = 29 steps per epoch
    c.total_steps = 30  # about one epoch (917 pairs)
    c.warmup_steps = 3  # 10% warm-up
    c.lr = 2e-5
    c.log_every = 1  # 30 steps: a line each
    c.eval_every = 0
    c.checkpoint_every = 15
    c.eval.sts_files = ()  # SciFact test is scored afterwards with evaluate.py --retrieval
    return base.apply_arg(c, arg)
