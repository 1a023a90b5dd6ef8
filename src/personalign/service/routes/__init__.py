"""The service's routes, one router per part: keys, users and their data (with fit jobs and
answers), and the personalized OpenAI-compatible API. Each reaches the service through
:func:`.deps.service_of` and the caller through :func:`.deps.who`."""
