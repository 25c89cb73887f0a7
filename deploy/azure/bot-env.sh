#!/bin/sh
# The bot's environment from a deployment of azuredeploy.json, as shell export lines: the
# template's outputs, BATCHAI_BACKEND=azure and the storage account's key (a secret the
# deployment record never holds, asked of the account itself).
#   eval "$(deploy/azure/bot-env.sh RESOURCE_GROUP [DEPLOYMENT])"
set -eu
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 RESOURCE_GROUP [DEPLOYMENT]  (the deployment's name: azuredeploy by default)" >&2
    exit 2
fi
group=$1
name=${2:-azuredeploy}
outputs=$(az deployment group show -g "$group" -n "$name" --query properties.outputs -o json)
printf '%s' "$outputs" | python3 -c '
import json, shlex, sys
for key, out in json.load(sys.stdin).items():
    print("export " + key + "=" + shlex.quote(str(out["value"])))
'
account=$(printf '%s' "$outputs" | python3 -c 'import json, sys; print(json.load(sys.stdin)["AZURE_STORAGE_ACCOUNT"]["value"])')
key=$(az storage account keys list -g "$group" -n "$account" --query '[0].value' -o tsv)
echo "export BATCHAI_BACKEND=azure"
echo "export AZURE_STORAGE_KEY='$key'"
