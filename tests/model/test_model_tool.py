"""The model upload tool and the deploy guard against moto in server mode, with the bundled real
tiny.en CTranslate2 model as the local source folder (no hub, no AWS)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest

from stacks.config import load_env_config, parse_env_config
from whisper_cli import main as cli
from whisper_cli import model_tool
from whisper_contract.model_manifest import ModelManifest

REPO = Path(__file__).resolve().parents[2]
CONTEXT = json.loads((REPO / "cdk.json").read_text())["context"]
PREFIX = "models/faster-whisper-large-v3/"  # dev's model_data_key in cdk.json
TINY_FILES = ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]


@pytest.fixture(scope="module")
def aws(moto_url):
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": moto_url}.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        yield moto_url


@pytest.fixture(scope="module")
def s3(aws):
    return boto3.client("s3", region_name="eu-west-1")


def new_bucket(s3) -> str:
    # Versioned like the real model bucket (stacks/storage.py): versions count every write.
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture(scope="module")
def cfg():
    return dataclasses.replace(load_env_config(CONTEXT, "dev"), model_id="tiny.en")


def put(s3, bucket, cfg, folder):
    target = model_tool.ModelTarget.of(cfg)
    files = model_tool.model_files(folder, target)
    manifest = model_tool.build_manifest(target, folder, files, model_id=cfg.model_id, source=str(folder),
                                         revision="local", quantization="as-provided")
    sent = []
    report = model_tool.upload(s3, bucket, target.location, files, manifest, progress=sent.append)
    return manifest, report, sum(sent)


@pytest.fixture(scope="module")
def first_upload(s3, cfg, tiny_en_dir):
    """The one real upload of tiny.en (75 MB through moto costs seconds here); tests that change
    the bucket start from a server-side copy of it (``seeded``)."""
    bucket = new_bucket(s3)
    manifest, report, sent = put(s3, bucket, cfg, tiny_en_dir)
    return bucket, manifest, report, sent


@pytest.fixture
def seeded(s3, first_upload):
    """A fresh bucket holding what a previous run of the tool uploaded (objects copied with their
    metadata). ``seeded(manifest=False)``: as if that run was interrupted before the manifest."""
    def make(manifest: bool = True) -> str:
        source = first_upload[0]
        bucket = new_bucket(s3)
        for obj in s3.list_objects_v2(Bucket=source)["Contents"]:
            if manifest or not obj["Key"].endswith("model-manifest.json"):
                s3.copy_object(Bucket=bucket, Key=obj["Key"], CopySource={"Bucket": source, "Key": obj["Key"]})
        return bucket
    return make


@pytest.fixture
def tiny_copy(tiny_en_dir, tmp_path):
    """tiny.en with its small files copied (so a test can change them) and model.bin linked."""
    folder = tmp_path / "tiny.en"
    folder.mkdir()
    for name in TINY_FILES:
        if name == "model.bin":
            (folder / name).symlink_to(tiny_en_dir / name)
        else:
            shutil.copyfile(tiny_en_dir / name, folder / name)
    return folder


def versions(s3, bucket):
    listing = s3.list_object_versions(Bucket=bucket)
    return len(listing.get("Versions", [])) + len(listing.get("DeleteMarkers", []))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_puts_every_file_with_its_sha256_and_the_manifest_last(s3, first_upload, tiny_en_dir):
    bucket, manifest, report, sent = first_upload

    assert report.uploaded == [PREFIX + n for n in TINY_FILES] + [PREFIX + "model-manifest.json"]
    assert sent == sum((tiny_en_dir / n).stat().st_size for n in TINY_FILES)
    stored = ModelManifest.from_json(s3.get_object(Bucket=bucket, Key=PREFIX + "model-manifest.json")["Body"].read())
    assert stored == manifest
    assert {f.path: f.sha256 for f in stored.files} == {n: sha256(tiny_en_dir / n) for n in TINY_FILES}
    assert (stored.model_id, stored.backend, stored.format) == ("tiny.en", "faster-whisper", "ctranslate2")
    head = s3.head_object(Bucket=bucket, Key=PREFIX + "model.bin")
    assert head["Metadata"]["sha256"] == sha256(tiny_en_dir / "model.bin")
    assert head["ContentLength"] == 75_537_502


def test_a_second_run_with_the_same_files_uploads_nothing(s3, cfg, first_upload, tiny_en_dir):
    bucket = first_upload[0]
    before = versions(s3, bucket)

    _, report, sent = put(s3, bucket, cfg, tiny_en_dir)

    assert report.uploaded == [] and report.removed == []
    assert len(report.skipped) == len(TINY_FILES)
    assert versions(s3, bucket) == before  # not a single write, not even the manifest
    assert sent == sum((tiny_en_dir / n).stat().st_size for n in TINY_FILES)  # progress still reaches 100 %


def test_a_changed_file_is_uploaded_alone_and_a_new_manifest_written(s3, cfg, seeded, tiny_copy):
    bucket = seeded()
    first = ModelManifest.from_json(s3.get_object(Bucket=bucket, Key=PREFIX + "model-manifest.json")["Body"].read())
    config = tiny_copy / "config.json"
    config.write_text(config.read_text().replace('"suppress_ids"', '"suppress_ids_changed"'))
    (tiny_copy / "vocabulary.txt").unlink()

    second, report, _ = put(s3, bucket, cfg, tiny_copy)

    assert report.uploaded == [PREFIX + "config.json", PREFIX + "model-manifest.json"]
    assert report.removed == [PREFIX + "vocabulary.txt"]  # SageMaker would copy a stale file to /opt/ml/model
    assert sorted(report.skipped) == [PREFIX + "model.bin", PREFIX + "tokenizer.json"]
    stored = ModelManifest.from_json(s3.get_object(Bucket=bucket, Key=PREFIX + "model-manifest.json")["Body"].read())
    assert stored == second != first
    assert {f.path: f.sha256 for f in stored.files}["config.json"] == sha256(config)
    live = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX)["Contents"]]
    assert sorted(live) == [PREFIX + n for n in ("config.json", "model-manifest.json", "model.bin", "tokenizer.json")]
    assert model_tool.check(s3, bucket, cfg).code == model_tool.EXIT_OK


def test_guard_missing_model_says_how_to_upload_it(s3, cfg):
    bucket = new_bucket(s3)
    verdict = model_tool.check(s3, bucket, cfg)
    assert verdict.code == model_tool.EXIT_MISSING
    assert verdict.message == (
        f"No model at s3://{bucket}/models/faster-whisper-large-v3/ (no model-manifest.json): the endpoint of dev "
        "would not start. Upload it with:\n  make model ENV=dev MODEL=tiny.en\n"
        "(from the hub; add SOURCE=<folder> to upload a local model)")


def test_guard_corrupt_manifest_and_changed_object(s3, cfg, seeded, tiny_en_dir):
    bucket = seeded()
    ok = model_tool.check(s3, bucket, cfg)
    assert ok.code == model_tool.EXIT_OK
    assert ok.message == (f"Model ok: s3://{bucket}/{PREFIX} holds tiny.en for faster-whisper (ctranslate2, "
                          f"quantization as-provided), 4 files, 0.08 GB, from {tiny_en_dir}@local.")

    s3.put_object(Bucket=bucket, Key=PREFIX + "config.json", Body=b"{}")  # someone overwrote a file
    changed = model_tool.check(s3, bucket, cfg)
    assert changed.code == model_tool.EXIT_MISSING
    assert changed.message.startswith(f"s3://{bucket}/{PREFIX}config.json is missing or does not match the manifest "
                                      f"(size {(tiny_en_dir / 'config.json').stat().st_size}, sha256 ")
    assert changed.message.endswith("Upload it with:\n  make model ENV=dev MODEL=tiny.en\n"
                                    "(from the hub; add SOURCE=<folder> to upload a local model)")

    s3.put_object(Bucket=bucket, Key=PREFIX + "model-manifest.json", Body=b'{"schema_version": 1, "model_id"')
    corrupt = model_tool.check(s3, bucket, cfg)
    assert corrupt.code == model_tool.EXIT_MISSING
    assert corrupt.message.startswith(f"s3://{bucket}/{PREFIX}model-manifest.json is not a valid model manifest "
                                      "(not JSON (")
    assert corrupt.message.endswith("). Upload it with:\n  make model ENV=dev MODEL=tiny.en\n"
                                    "(from the hub; add SOURCE=<folder> to upload a local model)")


def test_guard_refuses_a_model_of_another_form_or_model(s3, cfg, first_upload):
    bucket = first_upload[0]
    assert model_tool.check(s3, bucket, dataclasses.replace(cfg, backend="torch")).code == model_tool.EXIT_OK
    hf = new_bucket(s3)  # a torch upload (Hugging Face files) where faster-whisper would read
    stored = s3.get_object(Bucket=bucket, Key=PREFIX + "model-manifest.json")["Body"].read()
    torch_manifest = dataclasses.replace(ModelManifest.from_json(stored), backend="torch", format="huggingface")
    s3.put_object(Bucket=hf, Key=PREFIX + "model-manifest.json", Body=torch_manifest.to_json().encode())
    assert model_tool.check(s3, hf, cfg).message.startswith(
        f"The model at s3://{hf}/{PREFIX} is a huggingface model (prepared for backend torch), but dev uses backend "
        "faster-whisper, which loads ctranslate2.")
    other = model_tool.check(s3, bucket, dataclasses.replace(cfg, model_id="large-v3"))
    assert other.message.startswith(f"The model at s3://{bucket}/{PREFIX} is tiny.en, but cdk.json says model_id "
                                    "large-v3 for dev.")


def test_triton_guard_checks_the_base_weights_then_the_engines(s3, tmp_path):
    bucket = new_bucket(s3)
    # Triton 25.01 needs the driver-535 AMI (forward compatibility; stacks/config.py)
    raw = dict(CONTEXT["environments"]["dev"], backend="triton", model_id="large-v3",
               inference_ami_version="al2-ami-sagemaker-inference-gpu-2-1")
    raw["engine_build"] = dict(raw["engine_build"], serve_version="v1")
    cfg = parse_env_config("dev", raw)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "whisper"}')
    (hf / "model.safetensors").write_bytes(b"\0" * 1024)
    (hf / "pytorch_model.bin").write_bytes(b"\0" * 2048)  # the same weights again: not uploaded
    assert "make model ENV=dev MODEL=large-v3" in model_tool.check(s3, bucket, cfg).message
    _, report, _ = put(s3, bucket, cfg, hf)
    assert report.uploaded == ["hf/openai-whisper-large-v3/config.json", "hf/openai-whisper-large-v3/model.safetensors",
                               "hf/openai-whisper-large-v3/model-manifest.json"]

    verdict = model_tool.check(s3, bucket, cfg)

    assert verdict.code == model_tool.EXIT_ENGINES_MISSING
    assert verdict.message.endswith(
        f"No engines at s3://{bucket}/engines/large-v3/v1/ (engine_build.serve_version v1). Build them (the "
        "EngineBuild stack is deployed now):\n"
        "  .venv/bin/python -m whisper_engines start-build --env dev --version v1 --wait\n"
        "then run make deploy ENV=dev again.")


def test_whisper_sm_model_resumes_an_interrupted_upload_and_passes_the_guard(s3, seeded, tiny_en_dir, tmp_path,
                                                                             capsys, monkeypatch):
    bucket = seeded(manifest=False)
    context = json.loads(json.dumps(CONTEXT))
    context["environments"]["dev"]["model_id"] = "tiny.en"
    config = tmp_path / "cdk.json"
    config.write_text(json.dumps({"context": context}))
    monkeypatch.setenv(model_tool.MODEL_BUCKET_ENV, bucket)  # (moto's CreateStack alone takes 13 s here)
    args = ["model", "--env", "dev", "--config", str(config)]
    assert cli.main(args + ["--check"]) == model_tool.EXIT_MISSING
    assert "make model ENV=dev MODEL=tiny.en" in capsys.readouterr().err
    assert cli.main(args + ["--source", str(tiny_en_dir)]) == 0
    # Every file is already there with its sha256: only the manifest is written.
    assert "uploaded 0 files + manifest, 4 unchanged, 0 removed" in capsys.readouterr().err
    assert cli.main(args + ["--source", str(tiny_en_dir)]) == 0
    assert "already holds this model (4 files, same sha256): nothing uploaded" in capsys.readouterr().err
    assert cli.main(args + ["--check"]) == model_tool.EXIT_OK
    assert "Model ok" in capsys.readouterr().err


def test_the_model_bucket_comes_from_the_storage_stacks_output(monkeypatch):
    from botocore.stub import Stubber

    monkeypatch.delenv(model_tool.MODEL_BUCKET_ENV, raising=False)
    cloudformation = boto3.client("cloudformation", region_name="eu-west-1")
    with Stubber(cloudformation) as stub:
        stub.add_response("describe_stacks", {"Stacks": [{
            "StackName": "Whisper-dev-Storage", "CreationTime": "2026-12-01T00:00:00Z", "StackStatus": "CREATE_COMPLETE",
            "Outputs": [{"OutputKey": "InputBucketName", "OutputValue": "in"},
                        {"OutputKey": "ModelBucketName", "OutputValue": "whisper-dev-models-1-eu-west-1"}]}]},
            {"StackName": "Whisper-dev-Storage"})
        assert model_tool.model_bucket(cloudformation, "dev") == "whisper-dev-models-1-eu-west-1"
        stub.add_client_error("describe_stacks", "ValidationError", "Stack with id Whisper-dev-Storage does not exist")
        with pytest.raises(RuntimeError, match="stack Whisper-dev-Storage is not deployed; deploy it first: "
                                               "make deploy ENV=dev"):
            model_tool.model_bucket(cloudformation, "dev")


def test_storage_stack_name_and_output_match_the_synthesized_app():
    template = json.loads((REPO / "tests/infra/snapshots/dev" / (model_tool.STORAGE_STACK.format(env="dev") + ".json"))
                          .read_text())
    assert model_tool.MODEL_BUCKET_OUTPUT in template["Outputs"]


def test_make_deploy_deploys_storage_then_checks_the_model_then_the_rest():
    out = subprocess.run(["make", "-n", "deploy", "ENV=dev"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    storage = out.index("cdk deploy -c env=dev -o cdk.out/dev --require-approval broadening Whisper-dev-Storage")
    guard = out.index("whisper-sm model --env dev --check")
    rest = out.index("--require-approval broadening --all")
    assert storage < guard < rest
    assert "Whisper-dev-EngineBuild" in out[guard:rest]  # exit 3 (triton, no engines): only the build stack


@pytest.fixture(scope="module")
def mini_hf(tmp_path_factory, tiny_en_dir):
    """A Hugging Face Whisper checkpoint small enough to convert in seconds: random weights of a
    64-wide, one-layer Whisper, with tiny.en's real tokenizer (what the converter reads the
    vocabulary from) and an 80-bin feature extractor."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    folder = tmp_path_factory.mktemp("hf-mini")
    WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=51864, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=1,
        decoder_attention_heads=1, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
    )).save_pretrained(folder)
    WhisperTokenizerFast(tokenizer_file=str(tiny_en_dir / "tokenizer.json")).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def test_faster_whisper_gets_a_ctranslate2_conversion_with_the_configured_quantization(cfg, mini_hf, tmp_path):
    import ctranslate2

    target = model_tool.ModelTarget.of(dataclasses.replace(cfg, compute_type="int8"))
    ready, quantization = model_tool.prepare(target, mini_hf, tmp_path, log=lambda m: None)

    assert quantization == "int8"
    assert sorted(model_tool.model_files(ready, target)) == [
        "config.json", "model.bin", "preprocessor_config.json", "tokenizer.json", "vocabulary.json"]
    model = ctranslate2.models.Whisper(str(ready), device="cpu", compute_type="int8")
    assert not model.is_multilingual and model.n_mels == 80


def test_torch_and_triton_take_the_hugging_face_files_as_published(cfg, mini_hf, tiny_en_dir, tmp_path):
    torch_target = model_tool.ModelTarget.of(dataclasses.replace(cfg, backend="torch"))
    assert model_tool.prepare(torch_target, mini_hf, tmp_path) == (mini_hf, "as-provided")
    assert model_tool.prepare(torch_target, tiny_en_dir, tmp_path) == (tiny_en_dir, "as-provided")  # loads CT2 too
    assert sorted(model_tool.model_files(mini_hf, torch_target)) == [
        "config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
        "tokenizer_config.json"]
    triton = model_tool.ModelTarget("dev", "large-v3", "triton", "hf/x/", "huggingface", "none")
    with pytest.raises(ValueError, match="backend 'triton' needs a huggingface model; .* is ctranslate2"):
        model_tool.prepare(triton, tiny_en_dir, tmp_path)
