// Send one message through mailgw's HTTP API with Postal's Node client
// (@atech/postal), as an application written for Postal does, and print the
// client's view of the result as JSON: {recipient: {id, token}}.
//
// The client always connects to port 443 of the host it is given; Node's
// https.globalAgent.defaultPort points it at the test gateway's port
// instead, and NODE_EXTRA_CA_CERTS makes Node trust its certificate.
'use strict';
const https = require('https');
const Postal = require('@atech/postal');

https.globalAgent.defaultPort = Number(process.env.MAILGW_API_PORT);
const client = new Postal.Client('127.0.0.1', process.env.MAILGW_API_KEY);
const message = new Postal.SendMessage(client);
message.to('user@dest.example');
message.from('App <app@good.example>');
message.subject('from node');
message.plainBody('Hello from the Node client.');
message.send()
  .then(function (result) {
    const recipients = result.recipients();
    const out = {};
    for (const email in recipients) {
      out[email] = { id: recipients[email].id(), token: recipients[email].token() };
    }
    process.stdout.write(JSON.stringify(out) + '\n');
  })
  .catch(function (error) {
    process.stderr.write('send failed: ' + JSON.stringify(error) + '\n');
    process.exit(1);
  });
