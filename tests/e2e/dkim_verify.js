// An independent DKIM verifier for the tests: mailauth (npm), asking the DNS
// server given as HOST:PORT. Reads one message on standard input; prints one
// line per signature:  <result> <domain> <selector> <algorithm>
'use strict';
const dns = require('dns');
const { dkimVerify } = require('mailauth/lib/dkim/verify');

const resolver = new dns.promises.Resolver({ timeout: 5000, tries: 2 });
resolver.setServers([process.argv[2]]);

const chunks = [];
process.stdin.on('data', chunk => chunks.push(chunk));
process.stdin.on('end', async () => {
    const result = await dkimVerify(Buffer.concat(chunks), {
        resolver: (name, type) => resolver.resolve(name, type)
    });
    for (const r of result.results) {
        console.log([r.status.result, r.signingDomain, r.selector, r.algo, '(' + (r.status.comment || '') + ')'].join(' '));
    }
});
