# The inference container: run the server locally, package the DLC tarball, lint Dockerfiles.
MODEL ?= tiny.en
HOST ?= 127.0.0.1
PORT ?= 8080
DLC_OUT ?= build/dlc
DLC_FLAGS ?=
HADOLINT ?= hadolint

.PHONY: serve package-dlc hadolint

serve: install-server ## run the Whisper server on $(HOST):$(PORT), CPU, bundled model (MODEL=tiny.en|base)
	WHISPER_MODEL_DIR="$$($(PY) -c 'from whisper_server.bundled import bundled_model_dir as b; print(b("$(MODEL)"))')" \
	WHISPER_MODEL_NAME="$(MODEL)" WHISPER_DEVICE=cpu \
	$(PY) -m whisper_server --host $(HOST) --port $(PORT)

package-dlc: install-server ## build $(DLC_OUT)/model.tar.gz for the stock SageMaker PyTorch container (MODEL=, WHEELS=1 to bundle wheels)
	$(PY) -m whisper_build.package_dlc --model $(MODEL) --out $(DLC_OUT)/model.tar.gz $(if $(WHEELS),--download-wheels,) $(DLC_FLAGS)

hadolint: $(VENV)/.installed-dev ## lint the inference Dockerfiles (GPU, CPU, Triton)
	$(HADOLINT) containers/whisper/Dockerfile containers/whisper/Dockerfile.cpu containers/whisper/Dockerfile.triton
