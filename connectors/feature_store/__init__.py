"""Feature stores behind one interface (see `connectors.feature_store.base`)."""
from connectors.feature_store.base import (  # noqa: F401
    FeatureStore, FeatureStoreError, FeatureStoreUnavailable,
)
