"""The aiohttp application key under which `duplex serve` keeps its server state."""

from aiohttp import web

SERVER = web.AppKey("duplex_server", object)
