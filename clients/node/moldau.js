// A thin Node.js client for Moldau: the services of proto/moldau/v1, loaded at run time.
//
// No generated code: @grpc/proto-loader reads the .proto files from the repository's proto/
// directory, so this client always speaks the current contract. Thin clients send plain
// records (the broker encodes the RecordBatch) and fetch decoded records.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const FILES = ['admin.proto', 'produce.proto', 'fetch.proto'].map((f) => `moldau/v1/${f}`);

function loadApi(protoRoot = PROTO_ROOT) {
  const definition = protoLoader.loadSync(FILES, {
    includeDirs: [protoRoot],
    keepCase: true, // field names as in the .proto (snake_case)
    longs: String, // int64 offsets and timestamps as decimal strings: no precision loss
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).moldau.v1;
}

// Promise wrapper of a unary call; errors carry the gRPC code and the server's message.
function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

function connect(address) {
  const api = loadApi();
  const credentials = grpc.credentials.createInsecure();
  const clients = {
    admin: new api.AdminService(address, credentials),
    produce: new api.ProduceService(address, credentials),
    fetch: new api.FetchService(address, credentials),
  };
  return {
    createTopic: (name, partitions = 1, configs = {}) =>
      unary(clients.admin, 'CreateTopic', { name, partitions, configs }),
    // records: [{key?: Buffer|string, value?: Buffer|string, headers?: {k: v}}]
    produce: (topic, records, partition) =>
      unary(clients.produce, 'Produce', {
        topic,
        partition,
        records: {
          records: records.map((r) => ({
            key: r.key == null ? undefined : Buffer.from(r.key),
            value: r.value == null ? undefined : Buffer.from(r.value),
            headers: Object.entries(r.headers || {}).map(([key, value]) => ({
              key,
              value: value == null ? undefined : Buffer.from(value),
            })),
          })),
        },
      }),
    fetchDecoded: (topic, partition, offset, maxRecords = 1000, maxWaitMs = 0) =>
      unary(clients.fetch, 'Fetch', {
        topic,
        partition,
        offset,
        decoded: true,
        max_records: maxRecords,
        max_wait_ms: maxWaitMs,
      }),
    close: () => Object.values(clients).forEach((c) => c.close()),
  };
}

module.exports = { connect, loadApi, PROTO_ROOT };
