"""The benchmark's floor: the least a Flask JSON route can cost under the same gunicorn.

POST /api/predict parses the JSON body and answers a small JSON object of the
same shape as the real app's, without validation, model or recording. Served by
bench/run_http.py as `gunicorn -c gunicorn.conf.py bench.floor_app:app`, so the
workers, worker class and logging are the project's own.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/api/predict")
def predict() -> Any:
    body = request.get_json()
    passenger = body if isinstance(body, dict) else {}
    return jsonify(
        {
            "model_version": "floor",
            "predictions": [
                {"id": None, "PassengerId": passenger.get("PassengerId"), "survived": 0, "probability": 0.5}
            ],
        }
    )


@app.get("/api/health")
def health() -> Any:
    return jsonify({"status": "ok"})


# run_http.py waits for this line once per worker before it loads the server.
logging.getLogger("gunicorn.error").info("floor app loaded")
