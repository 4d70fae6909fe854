import warnings

# google-auth and google-api-core (imported by apache-beam's GCS filesystem once the `beam` extra
# is installed) warn at import time about Python and grpcio versions they will stop supporting.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
