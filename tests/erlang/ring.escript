#!/usr/bin/env escript
%% Owners on discord/ex_hash_ring's rule, computed with Erlang's own erlang:md5 (the golden values of
%% tests/test_ring.py come from here, not from Python): md5, bytes 8-15 little-endian; virtual nodes
%% "{name}{i}" for i in 0..511; a key's owner is the first point strictly above its hash, wrapping.
%% Usage: escript tests/erlang/ring.escript TOPIC...   prints "topic<TAB>owner of 2<TAB>owner of 3<TAB>hash"
hash(Key) -> <<_:8/binary, V:64/unsigned-little-integer>> = erlang:md5(Key), V.
points(Members) -> lists:sort([{hash(M ++ integer_to_list(I)), M} || M <- Members, I <- lists:seq(0, 511)]).
owner(Topic, Points) ->
    H = hash(Topic),
    case [P || {PH, _} = P <- Points, PH > H] of
        [{_, M} | _] -> M;
        [] -> element(2, hd(Points))
    end.
main(Topics) ->
    Two = points(["ts-1", "ts-2"]),
    Three = points(["ts-1", "ts-2", "ts-3"]),
    [io:format("~s\t~s\t~s\t~b~n", [T, owner(T, Two), owner(T, Three), hash(T)]) || T <- Topics].
