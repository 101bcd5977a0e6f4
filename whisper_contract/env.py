"""Environment variable names, in one place for the container, the Lambdas and the CDK app."""

# Container (SageMaker sets SM_* and /opt/ml/model itself; the rest are ours).
MODEL_DIR = "WHISPER_MODEL_DIR"  # default /opt/ml/model
BACKEND = "WHISPER_BACKEND"  # faster-whisper | torch | triton
DEVICE = "WHISPER_DEVICE"  # cpu | cuda | auto
COMPUTE_TYPE = "WHISPER_COMPUTE_TYPE"  # int8 | float16 | int8_float16 | default
MODEL_NAME = "WHISPER_MODEL_NAME"  # label in the transcript's model block
MAX_CONCURRENCY = "WHISPER_MAX_CONCURRENCY"  # = MaxConcurrentInvocationsPerInstance
REQUEST_TIMEOUT_S = "WHISPER_REQUEST_TIMEOUT_S"
MAX_INPUT_BYTES = "WHISPER_MAX_INPUT_BYTES"
BATCH_SIZE = "WHISPER_BATCH_SIZE"
MAX_QUEUE = "WHISPER_MAX_QUEUE"  # requests waiting beyond MAX_CONCURRENCY before 429
MAX_AUDIO_S = "WHISPER_MAX_AUDIO_S"  # longer audio is rejected (input_too_long)
CPU_THREADS = "WHISPER_CPU_THREADS"  # 0: CTranslate2 decides
SHUTDOWN_GRACE_S = "WHISPER_SHUTDOWN_GRACE_S"  # after SIGTERM, in-flight work gets this long
BODY_IDLE_TIMEOUT_S = "WHISPER_BODY_IDLE_TIMEOUT_S"  # longest pause inside a request body
MIN_BODY_RATE = "WHISPER_MIN_BODY_RATE"  # bytes/s a body must average once the idle timeout has passed
KEEP_ALIVE_S = "WHISPER_KEEP_ALIVE_S"  # an idle keep-alive connection is closed after this long
INSTANCE_TYPE = "WHISPER_INSTANCE_TYPE"  # ml.* type the endpoint runs on: the cost block's price key
SPOOL_DIR = "WHISPER_SPOOL_DIR"  # request bodies are spooled under here (default: the temp dir)
PORT = "SAGEMAKER_BIND_TO_PORT"  # SageMaker's own name; 8080 when unset

# Lambdas.
ENDPOINT_NAME = "ENDPOINT_NAME"
INPUT_BUCKET = "INPUT_BUCKET"
OUTPUT_BUCKET = "OUTPUT_BUCKET"
DEFAULT_OPTIONS = "DEFAULT_OPTIONS"  # query string of RequestOptions applied when metadata is silent
INVOCATION_TIMEOUT_S = "INVOCATION_TIMEOUT_S"
REQUEST_TTL_S = "REQUEST_TTL_S"
