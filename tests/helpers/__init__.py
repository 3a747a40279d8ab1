"""Everything the tests share, and only that: no test lives here.

  support.py            seeded models and oracles (GaussianDenoiser, RawOutputModel), importing the pack, REPO
  nodes.py              widget values and a reward for the in-process node tests
  hostlib.py            find, prepare, run and import the ComfyUI host (behind the fixtures in tests/conftest.py)
  workflow_format.py    a UI-format workflow read as the API-format prompt it stands for
  training_ddp.py       one SRRL stage on the tiny model, for the two-process test and its worker
  training_ddp_worker.py  one process of that test: ``python -m tests.helpers.training_ddp_worker OUT_DIR``
  rewards/              reward stand-ins in the real formats, a BLIP reference, a fake folder_paths, a judge server
  fixtures/             the tiny SD1.5-detectable checkpoint builder and the stock SD1.5 API workflow
"""
