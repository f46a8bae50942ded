"""Python client over loopml's REST API (httpx): the same nouns and errors as the server.

import loopml
client = loopml.Client()                       # LOOPML_URL, default http://127.0.0.1:8080
client.upload_model("churn", "gs://bucket/churn/", image_uri=SKLEARN, model_id="churn")
ep = client.create_endpoint("churn-ep")
client.deploy(ep["name"], "churn@default", min_replicas=1, max_replicas=2)
client.predict(ep["name"], [[1.0, 2.0]])
"""

from __future__ import annotations

from loopml.client.client import Client

__all__ = ["Client"]
