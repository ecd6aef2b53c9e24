"""The Python client for the gpulab hub API, used by the CLI and from notebooks; the
``gpulab`` command itself is ``gpulab.hub.client.cli``, one module per command group.

>>> from gpulab.hub.client import GpulabClient
>>> client = GpulabClient.from_environment()
>>> client.gpus()["free"]

Training jobs and sweeps (docs/jobs.md), e.g. from a notebook:

>>> client.submit_job({"name": "mnist", "script": "train.py", "replicas": {"worker": {"gpus": 1}}})
>>> for text in client.job_logs("mnist", follow=True):  # until the job ends
...     print(text, end="")
>>> client.wait_job("mnist")["state"]
'succeeded'

Models (docs/serving.md):

>>> client.deploy_model({"name": "line", "base_path": "models/line"})
>>> client.wait_model("line")["state"]
'available'
>>> client.predict("line", {"instances": [1.0, 2.0]})
{'predictions': [2.5, 3.0]}

Inside a user server it finds the hub through ``JUPYTERHUB_API_URL`` and the
server's token; elsewhere through ``GPULAB_URL`` / ``GPULAB_TOKEN``, or, as root on
the hub machine, the settings file and the gpulab CLI token in the data root.
"""

from .api import JOB_FINISHED, MODEL_SETTLED, RETURN_TIMEOUT, ClientError, GpulabClient

__all__ = ["JOB_FINISHED", "MODEL_SETTLED", "RETURN_TIMEOUT", "ClientError", "GpulabClient"]
