#!/bin/sh
# Deploys one unit of the application (a service and what it owns, plus the shared
# configuration) from k8s/overlays/prod, with its images at this commit.
# Run by the deploy jobs of the child pipelines (.gitlab/ci/templates.yml):
#   DEPLOY_UNIT      gateway | cache-svc | persistence-svc | workers
#   DEPLOY_IMAGES    the images built for it, e.g. "persistence-svc postgres"
#   ROLLOUTS         what to wait for, e.g. "deployment/persistence-svc statefulset/postgres"
#   KUBE_CONTEXT     <project path>:<agent name>, the GitLab agent's context
#   CHINOOK_SECRETS_ENV  a File variable: the production secrets.env
set -eu

: "${DEPLOY_UNIT:?}" "${DEPLOY_IMAGES:?}" "${ROLLOUTS:?}" "${KUBE_CONTEXT:?}"
: "${CI_REGISTRY_IMAGE:?}" "${CI_COMMIT_SHA:?}"
if [ -z "${CHINOOK_SECRETS_ENV:-}" ] || [ ! -s "$CHINOOK_SECRETS_ENV" ]; then
    echo "Set the File variable CHINOOK_SECRETS_ENV to the production secrets.env (docs/deploy.md, GitLab CI)." >&2
    exit 1
fi
if grep -q CHANGE_ME "$CHINOOK_SECRETS_ENV"; then
    echo "CHINOOK_SECRETS_ENV still holds CHANGE_ME placeholders." >&2
    exit 1
fi
cp "$CHINOOK_SECRETS_ENV" k8s/overlays/prod/secrets.env

# The prod overlay with this unit's images set; other units keep what runs now,
# since only this unit's objects (and the shared ones) are applied.
mkdir -p .deploy
{
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources:"
    echo "  - ../k8s/overlays/prod"
    echo "images:"
    for image in $DEPLOY_IMAGES; do
        echo "  - name: chinook/$image"
        echo "    newName: $CI_REGISTRY_IMAGE/$image"
        echo "    newTag: \"$CI_COMMIT_SHA\""
    done
} > .deploy/kustomization.yaml

kubectl config use-context "$KUBE_CONTEXT"
kubectl apply --server-side --field-manager=gitlab-ci --force-conflicts \
    --kustomize .deploy --selector "deploy-unit in (shared,$DEPLOY_UNIT)"
for target in $ROLLOUTS; do
    kubectl --namespace chinook rollout status "$target" --timeout=10m
done
