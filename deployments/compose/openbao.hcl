# OpenBao in docker-compose: one raft node whose data lives in the `openbao-data` volume,
# mounted at /openbao/file (the directory the image gives its `openbao` user). Plain HTTP on the
# compose network and on 127.0.0.1:8200 of the host: development only; in production TLS
# terminates here or in front of it. openbao-init.sh initialises and unseals it.
storage "raft" {
  path    = "/openbao/file"
  node_id = "airavata-1"
}

listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}

api_addr     = "http://openbao:8200"
cluster_addr = "http://openbao:8201"
# Integrated storage memory-maps its database: mlock would pin all of it (OpenBao's advice for
# raft is to disable it; the container then needs no IPC_LOCK).
disable_mlock = true
ui            = false
