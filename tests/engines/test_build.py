"""The build's orchestration end to end, with S3 in moto and the compile commands recorded.

Everything real except TensorRT-LLM itself: the LoRA merge and checkpoint conversion run on a
tiny random Whisper, the Triton repository is generated, checksums and the manifest are
computed, and the artifact is uploaded. The fake runner checks each command's inputs exist
and writes what trtllm-build would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import boto3
import pytest
import torch
from moto import mock_aws

from whisper_contract.engine_spec import EngineBuildSpec, EngineManifest
from whisper_engines import storage
from whisper_engines.build import BuildContext, BuildFailed, GpuInfo, plan, run_build
from whisper_engines.commands import BuildPaths, Tools

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

BUCKET = "example-model-bucket"


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(1)
    config = transformers.WhisperConfig(vocab_size=51866, num_mel_bins=128, d_model=16, encoder_layers=1,
                                        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                                        encoder_ffn_dim=32, decoder_ffn_dim=32)
    transformers.WhisperForConditionalGeneration(config).save_pretrained(root / "base")
    transformers.WhisperFeatureExtractor(feature_size=128).save_pretrained(root / "base")
    (root / "base" / "tokenizer.json").write_bytes((base_dir / "tokenizer.json").read_bytes())
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    peft.get_peft_model(transformers.WhisperForConditionalGeneration.from_pretrained(root / "base"),
                        lora).save_pretrained(root / "adapter")
    return root / "base", root / "adapter"


class Recorder:
    """Stands in for convert_checkpoint.py and trtllm-build: checks inputs, writes outputs."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, cmd: list[str]) -> None:
        self.commands.append(cmd)
        flags = dict(zip(cmd, cmd[1:]))
        if "--model_dir" in flags:  # convert_checkpoint.py reads <model_dir>/<model_name>.pt
            checkpoint = torch.load(Path(flags["--model_dir"]) / f"{flags['--model_name']}.pt")
            assert checkpoint["dims"]["n_mels"] == 128
            for part in ("encoder", "decoder"):
                out = Path(flags["--output_dir"]) / part
                out.mkdir(parents=True)
                (out / "config.json").write_text("{}")
        else:
            assert (Path(flags["--checkpoint_dir"]) / "config.json").is_file()
            out = Path(flags["--output_dir"])
            out.mkdir(parents=True)
            (out / "config.json").write_text(json.dumps({"max_batch_size": flags["--max_batch_size"]}))
            (out / "rank0.engine").write_bytes(b"engine " + flags["--checkpoint_dir"].encode())


class RecordingS3:
    """The boto3 client, with the order of writes noted."""

    def __init__(self, client) -> None:
        self._client = client
        self.writes: list[str] = []

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        self.writes.append(key)
        self._client.upload_file(filename, bucket, key)

    def put_object(self, **kwargs):
        self.writes.append(kwargs["Key"])
        return self._client.put_object(**kwargs)

    def __getattr__(self, name: str):
        return getattr(self._client, name)


@pytest.fixture
def s3(hf_model: tuple[Path, Path]):
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        base, adapter = hf_model
        for folder, prefix in ((base, "hf/tiny/"), (adapter, "lora/mine/")):
            for path in folder.rglob("*"):
                if path.is_file():
                    client.upload_file(str(path), BUCKET, prefix + path.relative_to(folder).as_posix())
        yield RecordingS3(client)


def _ctx(tmp_path: Path, **spec_changes: object) -> BuildContext:
    spec = EngineBuildSpec(model_name="large-v3", model_bucket=BUCKET, base_model_prefix="hf/tiny/",
                           artifact_prefix="engines/large-v3", lora_prefix="lora/mine/", max_batch=8)
    spec = dataclasses.replace(spec, **spec_changes)
    return BuildContext(spec=spec, paths=BuildPaths(tmp_path / "work"), tools=Tools(python="py", convert_script="c.py"),
                        version="v1", git_revision="0123456789abcdef")


A10G = lambda: GpuInfo(name="NVIDIA A10G", arch="sm86")  # noqa: E731


def test_full_build_uploads_a_verified_artifact(tmp_path: Path, s3: RecordingS3, hf_model) -> None:
    ctx = _ctx(tmp_path)
    runner = Recorder()
    verified: list[Path] = []

    def verify(artifact: Path) -> dict[str, object]:
        verified.append(artifact)
        # What the serving backend will read is already in place when verification runs.
        assert (artifact / "manifest.json").is_file() and (artifact / "triton" / "whisper_bls" / "config.pbtxt").is_file()
        return {"passed": True, "wer": 0.0}

    manifest = run_build(ctx, s3=s3, runner=runner, gpu=A10G, trtllm_version=lambda: "0.20.0", verify=verify,
                         log=lambda _: None)
    assert runner.commands == plan(ctx)
    assert verified == [ctx.paths.artifact]
    assert (manifest.gpu_arch, manifest.gpu_name, manifest.tensorrt_llm_version) == ("sm86", "NVIDIA A10G", "0.20.0")
    assert manifest.git_revision == "0123456789abcdef" and manifest.model_root == "/opt/ml/model"
    assert manifest.verification == {"passed": True, "wer": 0.0}

    prefix = "engines/large-v3/v1/"
    assert s3.writes[-1] == prefix + "manifest.json"  # written last: its presence means complete
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert listed == {prefix + k for k in manifest.checksums} | {prefix + "manifest.json"}
    assert {"engines/encoder/rank0.engine", "engines/decoder/config.json", "triton/tensorrt_llm/config.pbtxt",
            "triton/whisper_bls/1/model.py", "triton/whisper_bls/1/tokenizer.json"} <= set(manifest.checksums)
    stored = EngineManifest.from_json(s3.get_object(Bucket=BUCKET, Key=prefix + "manifest.json")["Body"].read())
    assert stored == manifest
    # Checksums are of the uploaded bytes.
    for rel, digest in manifest.checksums.items():
        body = s3.get_object(Bucket=BUCKET, Key=prefix + rel)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest
    # The LoRA adapter was merged into what went to convert_checkpoint.py.
    written = torch.load(ctx.paths.openai_dir / "large-v3.pt")["model_state_dict"]
    base = transformers.WhisperForConditionalGeneration.from_pretrained(hf_model[0]).state_dict()
    assert not torch.allclose(written["encoder.blocks.0.attn.query.weight"].float(),
                              base["model.encoder.layers.0.self_attn.q_proj.weight"], atol=1e-3)
    torch.testing.assert_close(written["encoder.blocks.0.attn.value.weight"],
                               base["model.encoder.layers.0.self_attn.v_proj.weight"].half())


def test_failed_verification_uploads_nothing(tmp_path: Path, s3: RecordingS3) -> None:
    with pytest.raises(BuildFailed, match="verification failed"):
        run_build(_ctx(tmp_path), s3=s3, runner=Recorder(), gpu=A10G, trtllm_version=lambda: "0.20.0",
                  verify=lambda artifact: {"passed": False, "wer": 0.9}, log=lambda _: None)
    assert s3.writes == []


def test_wrong_build_gpu_stops_before_any_work(tmp_path: Path, s3: RecordingS3) -> None:
    runner = Recorder()
    with pytest.raises(BuildFailed, match=r"Tesla V100.*sm70.*sm86"):
        run_build(_ctx(tmp_path), s3=s3, runner=runner, gpu=lambda: GpuInfo("Tesla V100-SXM2-16GB", "sm70"),
                  verify=lambda a: {"passed": True}, log=lambda _: None)
    assert runner.commands == [] and not ctx_work_exists(tmp_path)


def ctx_work_exists(tmp_path: Path) -> bool:
    return (tmp_path / "work").exists()


def test_existing_version_is_never_overwritten(tmp_path: Path, s3: RecordingS3) -> None:
    s3.put_object(Bucket=BUCKET, Key="engines/large-v3/v1/manifest.json", Body=b"{}")
    with pytest.raises(BuildFailed, match="already holds"):
        run_build(_ctx(tmp_path), s3=s3, runner=Recorder(), gpu=A10G, verify=lambda a: {"passed": True},
                  log=lambda _: None)


def test_missing_weights_fail_clearly(tmp_path: Path, s3: RecordingS3) -> None:
    with pytest.raises(FileNotFoundError, match="hf/nothing-here/"):
        run_build(_ctx(tmp_path, base_model_prefix="hf/nothing-here"), s3=s3, runner=Recorder(), gpu=A10G,
                  verify=lambda a: {"passed": True}, log=lambda _: None)


def test_tampered_artifact_is_not_uploaded(tmp_path: Path, s3: RecordingS3) -> None:
    artifact = tmp_path / "artifact"
    (artifact / "engines").mkdir(parents=True)
    (artifact / "engines" / "rank0.engine").write_bytes(b"good")
    manifest = EngineManifest(spec=_ctx(tmp_path).spec, version="v2", tensorrt_llm_version="0.20.0",
                              gpu_name="NVIDIA A10G", gpu_arch="sm86", git_revision="r", built_at="t",
                              model_root="/opt/ml/model", checksums=storage.checksums(artifact),
                              verification={"passed": True})
    (artifact / "engines" / "rank0.engine").write_bytes(b"evil")
    (artifact / "stray.txt").write_text("x")
    with pytest.raises(ValueError, match="unexpected stray.txt; changed engines/rank0.engine"):
        storage.upload_artifact(s3, artifact, BUCKET, "engines/large-v3/v2/", manifest)
    assert s3.writes == []
