"""Every process of the Procfile exists in every artifact, under the same names."""

from .conftest import DOCKERFILES, K8S, REPO, SERVICES, find, kustomize, load_yaml, procfile
from .test_gitlab_ci import CHILDREN
from .test_tiltfile import calls, execute


def test_every_process_is_in_every_artifact():
    assert set(procfile()) == set(SERVICES)
    compose = load_yaml(REPO / "docker-compose.yml")["services"]
    deployments = {r["metadata"]["name"] for r in find(kustomize(str(K8S / "overlays/prod")), "Deployment")}
    tilt_cluster = {args[0] for args, _ in calls(execute(local=False), "k8s_resource")}
    tilt_local = {args[0] for args, _ in calls(execute(local=True), "local_resource")}
    tilt_images = {args[0] for args, _ in calls(execute(local=False), "docker_build")}
    for process, (name, image, folder) in SERVICES.items():
        assert (REPO / DOCKERFILES[image]).is_file(), process
        assert compose[name]["image"] == f"chinook/{image}", process
        assert name in deployments and name in tilt_cluster and process in tilt_local, process
        assert f"chinook/{image}" in tilt_images, process
        assert CHILDREN[image if image == "workers" else name] == f"{folder}/.gitlab-ci.yml", process
        assert (REPO / folder / ".gitlab-ci.yml").is_file(), process
