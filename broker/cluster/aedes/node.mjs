// One node of an Aedes cluster: an Aedes broker whose persistence (retained messages, will
// messages, sessions, QoS 1 queues) and message bus (mqemitter) are one shared Redis.
// Configuration of the libraries only: the clustering is Aedes's own (takeover of a client
// id connected to another node, wills of clients whose node died, via $SYS heartbeats), plus
// two hooks for two defects of Aedes 1.2 in a cluster (below; --raw leaves them out).
// Started by broker/cluster (python -m broker.cluster); modules come from --modules (default:
// the node_modules beside this file, installed with `npm ci --prefix broker/cluster/aedes`).
import { createServer } from 'node:net'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

const { values: opt } = parseArgs({
  options: {
    id: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    'redis-host': { type: 'string', default: '127.0.0.1' },
    'redis-port': { type: 'string', default: '6379' },
    'heartbeat-ms': { type: 'string', default: '1000' },
    peers: { type: 'string', default: '' },
    // Aedes as released, without the two hooks below (to show what they are for).
    raw: { type: 'boolean', default: false },
    modules: { type: 'string', default: dirname(fileURLToPath(import.meta.url)) }
  }
})

const require = createRequire(join(opt.modules, 'package.json'))
const load = async (name) => {
  const mod = await import(pathToFileURL(require.resolve(name)).href)
  return mod.default ?? mod
}

const { Aedes } = await import(pathToFileURL(require.resolve('aedes')).href)
const redisPersistence = await load('aedes-persistence-redis')
const redisEmitter = await load('mqemitter-redis')
const redis = { host: opt['redis-host'], port: Number(opt['redis-port']) }

const broker = await Aedes.createBroker({
  id: opt.id,
  // The period of the node's $SYS heartbeat: a node silent for 3 periods is dead, and the
  // survivors publish the wills of its clients (checked every 4 periods).
  heartbeatInterval: Number(opt['heartbeat-ms']),
  maxClientsIdLength: 256,
  persistence: redisPersistence(redis),
  mq: redisEmitter(redis)
})

// Aedes delivers a packet that node X put on the bus to a client only if its brokerCounter is
// above the last one that client got from X (dedupe, lib/client.js). Counters are taken when
// a packet is made, but packets enter the bus in another order: a retained or QoS 1 one waits
// for Redis first, so a QoS 0 one made after it often overtakes it, and the retained / QoS 1
// packet is then silently dropped on every other node (moscajs/aedes#994 and #955, open;
// tests/integration/test_cluster_conformance.py, test_g). Renumbered as they enter the bus,
// counters rise in the order the bus (one Redis connection) carries them, so dedupe drops
// only true duplicates. Valid for clean sessions, which are all the mesh uses: a persistent
// session's offline queue keeps a packet's first number.
let busCounter = 0
const busEmit = broker.mq.emit.bind(broker.mq)
if (!opt.raw) {
  broker.mq.emit = (packet, cb) => {
    if (packet.brokerId === broker.id) packet.brokerCounter = ++busCounter
    return busEmit(packet, cb)
  }
}

// A will is stored under the id of the node that holds its connection. When that node dies,
// Aedes has the survivors publish its clients' wills once it has missed 3 heartbeats: seconds
// after those clients reconnected to another node and published their birth again, which the
// late will would overwrite (a retained 'offline' for a live client). So a client that
// connects here drops the wills its previous connections left on the other nodes: it is
// back, not gone (what MQTT 5's will delay does for a session resumed in time). A client that
// does not come back still gets its will published by the survivors.
const peers = opt.raw ? [] : opt.peers.split(',').filter((p) => p && p !== broker.id)
broker.on('clientReady', (client) => {
  for (const brokerId of peers) {
    broker.persistence.delWill({ id: client.id, brokerId }).catch((err) => {
      console.error(JSON.stringify({ event: 'del_will_failed', client: client.id, error: String(err) }))
    })
  }
})

const server = createServer(broker.handle)
server.listen(Number(opt.port), opt.host, () => {
  console.log(JSON.stringify({ event: 'listening', id: broker.id, host: opt.host, port: opt.port }))
})
const stop = () => {
  server.close()
  broker.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
