"""The workspace image: one container image every workspace runs, here and (later) on EC2.

It is ``FROM`` the shared Kinetic R base (``enclave_service/images/build_base.sh``: debootstrap +
``BASE_PACKAGES``), so the R and R packages a researcher tests with are exactly the enclave's,
plus a Python venv at ``/opt/kinetic/venv`` with jupyterhub (the hub's own version),
jupyterlab, jupyter-server-proxy and jupyter-rsession-proxy, at the versions installed for the
hub. Wheels are collected on the host (``pip wheel``, cached under ``~/.cache/kinetic/wheelhouse``)
and installed offline: the build runs with ``--network=none``.

Layout inside the image (uid/gid 1010 ``editor``, ``USER 1010:1010``, ``HOME=/home/editor``)::

    /opt/kinetic/bin/kinetic-workspace   entry command (on PATH): JUPYTERHUB_DEFAULT_URL = /rstudio
                                         where an rserver exists, /lab otherwise (unless set),
                                         then exec jupyterhub-singleuser "$@"
    /opt/kinetic/bin/kinetic-fetch-data  synthetic data download (PYTHONPATH=/opt/kinetic/lib)
    /opt/kinetic/provision/provision.sh  + blank_project/ (KINETIC_BLANK_PROJECT, KINETIC_FETCH_DATA
                                         are set in the image: pass only ANALYSIS_ID,
                                         ANALYSIS_API_KEY, KINETIC_URL, CUTOFF_DATE)
    /opt/kinetic/lib/                    kinetic-fetch-data's first-party modules, nothing else
    /opt/kinetic/venv/etc/jupyter/jupyter_server_config.py   default kernel "ir"; RStudio only
                                         where an rserver exists
    /opt/kinetic/venv/share/jupyter/lab/settings/overrides.json   rstudio_patch's overrides

Run locally (what the container backend does)::

    podman run ... -v HOME_DIR:/home/editor TAG kinetic-workspace --ip=0.0.0.0 --port=8888
    podman run ... -v HOME_DIR:/home/editor -e ANALYSIS_ID ... TAG bash /opt/kinetic/provision/provision.sh

Baking the EC2 image later: the recipe is a plain build context (``builder.write_context``:
``Containerfile`` + ``opt/`` + ``jupyter/`` + ``wheels/``), so either ship the built image
(``podman save TAG | zstd`` → ``docker load`` / ``podman load`` in the AMI bake, e.g. an image
builder component or a Packer shell step) or build the same context there with ``docker build``
/ ``podman build`` (the base comes from the same ``build_base.sh``). The EC2 host then runs
this same image with the same two commands; the tag names the exact inputs, so the AMI can be
labelled with it and a hub can refuse a host whose image tag differs from its own.

API: ``workspace_image_tag()`` (pure, cheap), ``await ensure_workspace_image(on_progress)``;
CLI: ``python -m kinetic_spawner.image`` builds if needed and prints the tag.
"""

from .builder import (
    ImageBuildError,
    ensure_workspace_image,
    requirement_pins,
    workspace_image_tag,
)

__all__ = ["ImageBuildError", "ensure_workspace_image", "requirement_pins", "workspace_image_tag"]
