// spawn + wait of /bin/true with Node's child_process.spawn: N children, K in flight.
//   node spawn_node.js N K      prints the seconds taken
'use strict';
const { spawn } = require('child_process');

const n = Number(process.argv[2] || 2000);
const k = Number(process.argv[3] || 1);
let left = n;
let running = 0;
const t0 = process.hrtime.bigint();

function next() {
  if (left === 0) {
    if (running === 0) {
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      console.log(s.toFixed(6));
    }
    return;
  }
  --left;
  ++running;
  const c = spawn('/bin/true', [], { stdio: 'inherit' });
  c.on('exit', (code) => {
    if (code !== 0) console.error('child failed', code);
    --running;
    next();
  });
}

for (let i = 0; i < k; ++i) next();
