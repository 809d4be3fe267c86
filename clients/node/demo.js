// node demo.js HOST:PORT TOPIC [COUNT]
//
// Creates TOPIC (one partition), produces COUNT plain records (key, value, one header), then
// fetches them back decoded and prints one JSON object per record and a summary line.
// Exits 1 with the server's status and message on any error.
'use strict';

const { connect } = require('./moldau');

async function main(argv) {
  const [address, topic, countText = '3'] = argv;
  if (!address || !topic) {
    console.error('usage: node demo.js HOST:PORT TOPIC [COUNT]');
    return 1;
  }
  const count = Number.parseInt(countText, 10);
  const moldau = connect(address);
  try {
    const created = await moldau.createTopic(topic, 1);
    console.error(`created ${created.topic.name} with ${created.topic.partition_count} partition`);
    const records = Array.from({ length: count }, (_, i) => ({
      key: `key-${i}`,
      value: `hello from node ${i}`,
      headers: { lang: 'node' },
    }));
    const produced = await moldau.produce(topic, records, 0);
    const result = produced.results[0];
    console.error(`produced offsets ${result.base_offset}..${result.last_offset}`);

    const fetched = await moldau.fetchDecoded(topic, 0, 0, count, 1000);
    for (const record of fetched.records) {
      console.log(JSON.stringify({
        offset: Number(record.offset),
        timestamp: Number(record.timestamp_ms),
        key: record.key == null ? null : record.key.toString('utf8'),
        value: record.value == null ? null : record.value.toString('utf8'),
        headers: Object.fromEntries(record.headers.map((h) => [h.key, h.value?.toString('utf8') ?? null])),
      }));
    }
    console.log(`fetched ${fetched.records.length} records, high watermark ${fetched.high_watermark}`);
    return 0;
  } catch (error) {
    console.error(`moldau: ${error.code !== undefined ? `status ${error.code}: ` : ''}${error.details || error.message}`);
    return 1;
  } finally {
    moldau.close();
  }
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
