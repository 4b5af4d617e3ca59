from django.contrib import admin
from django.urls import include, path

from testproject import views

urlpatterns = [
    path("", views.index, name="index"),
    path("favicon.ico", views.no_favicon),  # browsers ask every page for one: no 404 in their console
    path("chain/", views.chain_page, name="chain"),
    path("hedging/", views.hedging_page, name="hedging"),
    path("shedding/", views.shedding_page, name="shedding"),
    path("demo/hop", views.hop, name="hop"),
    path("demo/stats", views.stats, name="stats"),
    path("demo/downstream/things/<str:name>", views.downstream, name="downstream"),
    path("admin/", admin.site.urls),
    path("", include("django_prometheus.urls")),  # /metrics
]
