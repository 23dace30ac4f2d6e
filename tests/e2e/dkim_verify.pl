#!/usr/bin/perl
# An independent DKIM verifier for the tests: Mail::DKIM (Debian's
# libmail-dkim-perl), asking the DNS server given as HOST:PORT. Reads one
# message on standard input; prints one line per signature:
#   <result> <domain> <selector> <algorithm>
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my ($host, $port) = split /:/, $ARGV[0];
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => [$host], port => $port, recurse => 1, retry => 2,
    udp_timeout => 5, tcp_timeout => 5));
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\015?\012\z/\015\012/;
    $dkim->PRINT($line);
}
$dkim->CLOSE;
foreach my $sig ($dkim->signatures) {
    print join(" ", $sig->result, $sig->domain, $sig->selector, $sig->algorithm, "(" . ($sig->result_detail // "") . ")"), "\n";
}
