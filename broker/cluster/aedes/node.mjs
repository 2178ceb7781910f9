// One node of an Aedes cluster: an Aedes broker whose persistence (retained messages, will
// messages, sessions, QoS 1 queues) and message bus (mqemitter) are one shared Redis.
// Configuration of the libraries only: the clustering is Aedes's own (takeover of a client
// id connected to another node, wills of clients whose node died, via $SYS heartbeats), plus
// two hooks for two defects of Aedes 1.2 in a cluster (below; --raw leaves them out).
// Started by broker/cluster (python -m broker.cluster); modules come from --modules (default:
// the node_modules beside this file, installed with `npm ci --prefix broker/cluster/aedes`).
//
// Security, the mesh's own (docs/brokers.md): --password-file (the mesh's accounts, Mosquitto
// $7$ hashes, faillite accounts) admits a client only under its own account, with its client
// id equal to its username; --acl-file (JSON written by broker/cluster from
// faillite.identity.identity_acl) authorizes each publish, subscribe and delivery as
// broker/_acl.py does; --cert/--key (the mesh's server certificate, faillite pki) serve TLS.
// The Redis password comes from $FAILLITE_REDIS_PASSWORD (never on the command line).
import { pbkdf2, timingSafeEqual } from 'node:crypto'
import { readFileSync, statSync } from 'node:fs'
import { createServer as createNetServer } from 'node:net'
import { createServer as createTlsServer } from 'node:tls'
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
    modules: { type: 'string', default: dirname(fileURLToPath(import.meta.url)) },
    'password-file': { type: 'string' },
    'acl-file': { type: 'string' },
    'login-delay-ms': { type: 'string', default: '200' },
    'login-delay-max-ms': { type: 'string', default: '5000' },
    cert: { type: 'string' },
    key: { type: 'string' },
    ca: { type: 'string' },
    // Reads [filter, topic] pairs (JSON) on stdin, prints [matches, filterCovers] for each and
    // exits: how tests/integration/test_cluster_security.py checks them against the Python.
    'match-stdin': { type: 'boolean', default: false }
  }
})
const log = (event, fields = {}) => console.error(JSON.stringify({ event, id: opt.id, ...fields }))

// MQTT 3.1.1 §4.7 matching of a concrete topic against a filter (faillite/topics.py matches).
function matches (filter, topic) {
  if (topic.startsWith('$') && (filter[0] === '+' || filter[0] === '#')) return false
  const f = filter.split('/')
  const t = topic.split('/')
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false
  }
  return f.length === t.length
}

// True if every topic that subscription filter `sub` matches is matched by `rule`
// (broker/_acl.py filter_covers).
function filterCovers (rule, sub) {
  const r = rule.split('/')
  const s = sub.split('/')
  for (let i = 0; i < s.length; i++) {
    if (i >= r.length) return false
    if (r[i] === '#') return true
    if (s[i] === '#') return false
    if (s[i] === '+') {
      if (r[i] !== '+') return false
    } else if (r[i] !== '+' && r[i] !== s[i]) {
      return false
    }
  }
  return r.length === s.length || (r.length === s.length + 1 && r[r.length - 1] === '#')
}

if (opt['match-stdin']) {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  const pairs = JSON.parse(Buffer.concat(chunks).toString('utf8'))
  const out = JSON.stringify(pairs.map(([f, t]) => [matches(f, t), filterCovers(f, t)]))
  await new Promise((resolve) => process.stdout.write(out + '\n', resolve)) // all of it, then exit
  process.exit(0)
}

const require = createRequire(join(opt.modules, 'package.json'))
const load = async (name) => {
  const mod = await import(pathToFileURL(require.resolve(name)).href)
  return mod.default ?? mod
}

const { Aedes } = await import(pathToFileURL(require.resolve('aedes')).href)
const redisPersistence = await load('aedes-persistence-redis')
const redisEmitter = await load('mqemitter-redis')
const redis = { host: opt['redis-host'], port: Number(opt['redis-port']) }
if (process.env.FAILLITE_REDIS_PASSWORD) redis.password = process.env.FAILLITE_REDIS_PASSWORD


// ---- Accounts and ACL: the rules of broker/_acl.py (AccessPolicy), on this node's hooks. ----

const MAX_ITERATIONS = 1000000 // faillite/accounts.py: a hash asking for more is refused
const MAX_PENDING_PER_SOURCE = 8 // broker/_amqtt_hooks.py: more waiting logins are refused
// broker/_amqtt_hooks.py: sockets of one address not admitted yet (no CONNECT, a TLS handshake
// or a login in progress) held at most; more are closed at once, and each must be admitted
// within ADMIT_WITHIN_MS.
const MAX_UNADMITTED_PER_SOURCE = 32
const ADMIT_WITHIN_MS = 10000
const REFUSAL_LOG_EVERY_MS = 10000 // one line per address and this long, with the count
const REVOCATION_SWEEP_MS = 1000 // how often live clients are checked against the accounts
const FORGET_MS = 60000 // LoginThrottle: a quiet minute forgets a source's failures
const MAX_SOURCES = 4096

const B64 = /^[A-Za-z0-9+/]*={0,2}$/
function parseHash (encoded) {
  // Mosquitto's $7$: PBKDF2-HMAC-SHA512, $7$iterations$salt_b64$key_b64 (64-byte key).
  const parts = encoded.split('$')
  if (parts.length !== 5 || parts[0] !== '' || parts[1] !== '7') throw new Error('not a Mosquitto $7$ hash')
  if (!/^[0-9]+$/.test(parts[2]) || !B64.test(parts[3]) || !B64.test(parts[4])) throw new Error('malformed $7$ hash')
  const iterations = Number(parts[2])
  const salt = Buffer.from(parts[3], 'base64')
  const key = Buffer.from(parts[4], 'base64')
  if (iterations < 1 || iterations > MAX_ITERATIONS || key.length !== 64) throw new Error('$7$ hash out of range')
  return { iterations, salt, key }
}

function readPasswordFile (path) {
  const out = new Map()
  readFileSync(path, 'utf8').split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim()
    if (!line || line.startsWith('#')) return
    const sep = line.indexOf(':')
    if (sep < 0) throw new Error(`${path}:${i + 1}: expected username:hash`)
    try {
      out.set(line.slice(0, sep).trim(), parseHash(line.slice(sep + 1).trim()))
    } catch (err) {
      throw new Error(`${path}:${i + 1}: ${err.message}`)
    }
  })
  return out
}

// A file re-read when it changes (an account added or revoked, rules regenerated); one that
// became unreadable or malformed keeps what was last read (as AccessPolicy.reload).
function watched (path, parse) {
  let stamp = null
  let value = null
  const get = () => {
    try {
      const st = statSync(path)
      const now = `${st.mtimeMs}:${st.size}`
      if (now !== stamp) {
        value = parse(path)
        stamp = now
      }
    } catch (err) {
      if (value === null) throw err
      log('file_unreadable', { path, error: String(err.message ?? err) })
    }
    return value
  }
  get() // read at start: an unreadable file fails the node's start, not a CONNECT
  return get
}

const passwords = opt['password-file'] ? watched(opt['password-file'], readPasswordFile) : null
// { mesh, acl: bool, users: { username: { read: [filters], write: [filters] } } }: the users
// are the mesh's identities (names and probe names), with their identity_acl rules.
const aclFile = opt['acl-file'] ? watched(opt['acl-file'], (p) => JSON.parse(readFileSync(p, 'utf8'))) : null
if (passwords && !aclFile) throw new Error('--password-file needs --acl-file (the mesh\'s identities)')

// Failed logins per source address: each failure doubles the wait before the refusal (from
// --login-delay-ms up to --login-delay-max-ms); a quiet minute forgets them.
const baseMs = Number(opt['login-delay-ms'])
const maxMs = Number(opt['login-delay-max-ms'])
const failures = new Map() // source -> [count, last]
function failed (source) {
  const now = Date.now()
  let [count, last] = failures.get(source) ?? [0, now]
  failures.delete(source)
  if (now - last > FORGET_MS) count = 0
  failures.set(source, [count + 1, now])
  while (failures.size > MAX_SOURCES) failures.delete(failures.keys().next().value)
  return Math.min(baseMs * 2 ** Math.min(count, 30), maxMs)
}

const RULES = Symbol('faillite.rules') // on each client: its identity's rules, null: unrestricted
const rulesOf = (client) => (client && client[RULES] !== undefined ? client[RULES] : false)
function allowed (rules, op, topic) {
  if (rules === null) return true
  if (!rules) return false // no admission recorded: nothing (fail closed)
  if (op === 'publish') return rules.write.some((f) => matches(f, topic))
  if (op === 'subscribe') return rules.read.some((f) => filterCovers(f, topic))
  return rules.read.some((f) => matches(f, topic))
}

const refusal = (code, reason) => Object.assign(new Error(reason), { returnCode: code, reason })

async function admit (client, username, password) {
  if (!passwords) return { rules: null } // an open, loopback-only mesh
  if (!username) throw refusal(4, 'no_username')
  // A client connects only as its own identity (its name, or its probe name, each its own
  // username): it can take nobody else's session or fire their will.
  if (client.id !== username) throw refusal(2, 'client_id_not_account')
  const acl = aclFile()
  const user = Object.hasOwn(acl.users, username) ? acl.users[username] : null
  if (user === null) throw refusal(4, 'not_an_identity')
  const hash = passwords().get(username)
  if (!hash) throw refusal(4, 'unknown_user')
  if (!password) throw refusal(4, 'bad_password')
  const given = await new Promise((resolve, reject) => {
    pbkdf2(password, hash.salt, hash.iterations, 64, 'sha512', (err, key) => (err ? reject(err) : resolve(key)))
  })
  if (!timingSafeEqual(given, hash.key)) throw refusal(4, 'bad_password')
  return { rules: acl.acl ? user : null }
}

const pending = new Map() // source -> logins waiting
const chains = new Map() // source -> the last login judged from there
function authenticate (client, username, password, callback) {
  const source = client.conn?.remoteAddress ?? '?'
  const peer = `${source}:${client.conn?.remotePort}`
  const waiting = pending.get(source) ?? 0
  if (waiting >= MAX_PENDING_PER_SOURCE) {
    log('auth_refused', { client: client.id, username, reason: 'too_many_pending_logins', peer })
    return callback(refusal(3, 'too_many_pending_logins'), false)
  }
  pending.set(source, waiting + 1)
  // Logins from one address are judged one at a time and a refusal is held back: a brute
  // force gets a few guesses a second, whatever its parallelism.
  const judged = (chains.get(source) ?? Promise.resolve()).then(async () => {
    try {
      // A valid login does not forget the address's failures: a guesser beside one stolen
      // device would start afresh after each of its logins (only refusals ever wait).
      return await admit(client, username, password)
    } catch (err) {
      const delay = failed(source)
      log('auth_refused', { client: client.id, username, reason: err.reason ?? String(err), peer, delay_ms: delay })
      await new Promise((resolve) => setTimeout(resolve, delay))
      throw err.returnCode ? err : refusal(3, 'auth_error')
    }
  })
  const tail = judged.catch(() => {})
  chains.set(source, tail)
  judged.then((out) => {
    client[RULES] = out.rules
    const will = client._will
    if (will && !allowed(out.rules, 'publish', will.topic)) {
      // Mosquitto accepts such a client and silently drops its will; so do we, loudly.
      log('will_denied', { client: client.id, topic: will.topic })
      client._will = null
    }
    callback(null, true)
  }, (err) => callback(err, false)).catch((err) => {
    log('auth_error', { client: client.id, error: String(err?.stack ?? err) })
  }).finally(() => {
    const left = (pending.get(source) ?? 1) - 1
    if (left > 0) {
      pending.set(source, left)
    } else {
      pending.delete(source)
      if (chains.get(source) === tail) chains.delete(source)
    }
  })
}

const hooks = !passwords
  ? {}
  : {
      authenticate,
      authorizePublish (client, packet, callback) {
        if (packet.topic.startsWith('$SYS/')) return callback(new Error('$SYS/ topic is reserved'))
        // null: a will this node publishes for a client of a dead node (checked at its CONNECT).
        if (client === null || allowed(rulesOf(client), 'publish', packet.topic)) return callback(null)
        log('acl_denied', { client: client.id, action: 'publish', topic: packet.topic })
        callback(new Error('publish not authorized')) // Aedes then closes the connection
      },
      authorizeSubscribe (client, sub, callback) {
        // Granted only if the whole filter is readable (as broker/_acl.py): a retained message
        // replayed on SUBSCRIBE is then readable too; authorizeForward checks each one anyway.
        if (allowed(rulesOf(client), 'subscribe', sub.topic)) return callback(null, sub)
        log('acl_denied', { client: client.id, action: 'subscribe', topic: sub.topic })
        callback(null, null) // SUBACK 0x80 for this filter
      },
      authorizeForward (client, packet) {
        return allowed(rulesOf(client), 'receive', packet.topic) ? packet : null
      }
    }

const broker = await Aedes.createBroker({
  ...hooks,
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

// Unadmitted sockets per source address (a flood of idle sockets, a slowloris, handshakes
// never finished): counted from the TCP accept until the login is admitted or the socket
// closes. Where there are no accounts, only the deadline applies to a CONNECT.
const unadmitted = new Map() // source -> sockets open and not admitted
const releases = new Map() // 'address:port' -> release its count (on admission)
const refused = new Map() // source -> [refused since the last line, when that line was]
function gate (socket) {
  const source = socket.remoteAddress ?? '?'
  const peer = `${source}:${socket.remotePort}`
  const held = unadmitted.get(source) ?? 0
  if (passwords && held >= MAX_UNADMITTED_PER_SOURCE) {
    const [n, at] = refused.get(source) ?? [0, 0]
    const now = Date.now()
    if (now - at >= REFUSAL_LOG_EVERY_MS) {
      log('too_many_unadmitted', { source, held, refused: n + 1, cap: MAX_UNADMITTED_PER_SOURCE })
      refused.set(source, [0, now])
    } else {
      refused.set(source, [n + 1, at])
    }
    while (refused.size > MAX_SOURCES) refused.delete(refused.keys().next().value)
    socket.destroy()
    return false
  }
  unadmitted.set(source, held + 1)
  let counted = true
  const release = () => {
    if (!counted) return
    counted = false
    clearTimeout(deadline)
    releases.delete(peer)
    const left = (unadmitted.get(source) ?? 1) - 1
    if (left > 0) unadmitted.set(source, left)
    else unadmitted.delete(source)
  }
  const deadline = setTimeout(() => {
    if (!counted) return
    log('not_admitted_in_time', { peer, within_ms: ADMIT_WITHIN_MS })
    socket.destroy()
  }, ADMIT_WITHIN_MS)
  deadline.unref()
  releases.set(peer, release)
  socket.once('close', release)
  socket.on('error', () => {}) // a reset before the handshake: closed, counted out
  return true
}
broker.on('clientReady', (client) => {
  const conn = client.conn
  releases.get(`${conn?.remoteAddress}:${conn?.remotePort}`)?.()
})

// Revocation takes effect at once: an account removed from the password file (faillite
// accounts revoke) loses its live connections here within REVOCATION_SWEEP_MS, as its next
// logins are refused (the file is re-read when it changes); its will fires.
function sweep () {
  if (!passwords) return
  let accounts
  try {
    accounts = passwords()
  } catch {
    return
  }
  for (const client of Object.values(broker.clients)) {
    if (client.id && !accounts.has(client.id)) {
      log('revoked_client_closed', { client: client.id })
      client.close()
    }
  }
}
setInterval(sweep, REVOCATION_SWEEP_MS).unref()
process.on('SIGHUP', sweep)

// TLS with the mesh's own CA (faillite pki server): clients verify this certificate.
const tls = Boolean(opt.cert && opt.key)
const server = tls
  ? createTlsServer({
    cert: readFileSync(opt.cert),
    key: readFileSync(opt.key),
    ...(opt.ca ? { ca: readFileSync(opt.ca) } : {}),
    minVersion: 'TLSv1.2',
    handshakeTimeout: ADMIT_WITHIN_MS
  }, broker.handle)
  : createNetServer((socket) => { if (gate(socket)) broker.handle(socket) })
if (tls) {
  // The raw socket, before its handshake: a TLS server's own 'connection' listener starts
  // the handshake after this one, on a socket this one may have closed already.
  server.prependListener('connection', gate)
  server.on('tlsClientError', (err, socket) => log('tls_refused', { peer: socket.remoteAddress, error: err.code ?? String(err) }))
}
server.listen(Number(opt.port), opt.host, () => {
  console.log(JSON.stringify({
    event: 'listening', id: broker.id, host: opt.host, port: opt.port, tls, accounts: Boolean(passwords), acl: Boolean(aclFile?.().acl)
  }))
})
const stop = () => {
  server.close()
  broker.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
