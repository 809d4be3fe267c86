#!/usr/bin/env bash
# Make a local test CA, a server certificate for localhost / 127.0.0.1 / ::1, and client
# certificates (for mTLS) with the given common names. For tests and local trials only: the
# keys are unencrypted and the CA key sits next to the certificates.
#
# Usage:  scripts/make-test-ca.sh OUT_DIR [CLIENT_CN ...]      (default client CN: client)
#
# Writes into OUT_DIR:
#   ca.pem ca.key                  the CA (give ca.pem to clients: MOLDAU_TLS_CA_FILE, and to
#                                  the server as tls_client_ca_file for mTLS)
#   server.pem server.key          the server's certificate and key (tls_cert_file, tls_key_file)
#   client-<CN>.pem client-<CN>.key  one pair per client CN (MOLDAU_TLS_CERT_FILE / _KEY_FILE);
#                                  the server sees the principal User:<CN>
set -euo pipefail

if ! command -v openssl >/dev/null 2>&1; then
    echo "make-test-ca.sh: openssl is not installed (apt-get install openssl)" >&2
    exit 1
fi
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [CLIENT_CN ...]" >&2
    exit 1
fi
out=$1
shift
[ $# -gt 0 ] || set -- client
mkdir -p "$out"
cd "$out"
days=30

newkey() {  # EC P-256 keys: small and fast to make
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 600 "$1"
}

newkey ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=Moldau test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem 2>/dev/null

sign() {  # sign NAME CN EXTFILE: NAME.key -> NAME.pem
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 \
        -days "$days" -extfile "$3" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr"
}

ext=$(mktemp)
trap 'rm -f "$ext" ca.srl' EXIT

newkey server.key
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" >"$ext"
sign server localhost "$ext"

for cn in "$@"; do
    newkey "client-$cn.key"
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=clientAuth" >"$ext"
    sign "client-$cn" "$cn" "$ext"
done
echo "wrote CA, server and client certificates ($*) to $out"
