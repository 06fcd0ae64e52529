# Policy `airavata`: what our services (REST API, Prefect worker) do in OpenBao, call by call in
# adapters/openbao.py. Loaded by openbao-init.sh; the services' token carries it and no other.

# Credentials: KV v2 under secret/, each write a new version, destroy removes every version.
path "secret/data/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/*" {
  capabilities = ["read", "list", "delete"]
}

# A task's own policy (task-<hex>), written before its token and deleted with it
# (hvac's sys.create_or_update_policy / sys.delete_policy use sys/policy/NAME).
path "sys/policy/task-*" {
  capabilities = ["create", "update", "delete"]
}
path "sys/policies/acl/task-*" {
  capabilities = ["create", "update", "delete"]
}

# A task's child token carries only its task policy, which this token does not hold: creating
# it needs sudo on auth/token/create. OpenBao still refuses a `root` token to it (a test checks),
# but since it writes task-* policies it could grant itself any other path: it is as strong as
# the services that hold it, and stays with them.
path "auth/token/create" {
  capabilities = ["create", "update", "sudo"]
}
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}
